"""SynthCity static street: sky, road and sidewalks, skyline, façades, trees, walls and fences.

Placement functions return ``Item`` tuples (layer, depth, draw) that the scene sorts and draws back to
front. Layers settle occlusion where one depth cannot: façades and walls run along the road, so they
are drawn before everything standing between them and the camera's line of travel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from clda_deploy.data.synthcity.objects import Camera, Canvas, TrainId, pick_color, shade
from clda_deploy.data.synthcity.style import Color

Item = tuple[int, float, Callable[[Canvas], None]]
OUTER_LAYER, KERB_LAYER, STREET_LAYER = 1, 2, 3  # building line, sidewalk edge, street
SIDES = (-1, 1)  # left, right
FLOOR = 3.2  # metres per storey


@dataclass(frozen=True)
class Street:
    """Lateral cross-section (metres from the camera, left negative) and depth range."""

    road_left: float
    road_right: float
    sidewalk_widths: tuple[float, float]  # left, right
    verge_widths: tuple[float, float]  # terrain between sidewalk and building line
    sun_side: int  # façades on this side face away from the sun and cast shadows onto the street
    near: float  # depth of the road at the bottom image row
    far: float = 160.0  # draw distance; the skyline stands there

    def kerb(self, side: int) -> float:
        return self.road_left if side < 0 else self.road_right

    def outer(self, side: int) -> float:
        return self.kerb(side) + side * self.sidewalk_widths[side > 0]

    def building_line(self, side: int) -> float:
        return self.outer(side) + side * self.verge_widths[side > 0]


def sample_street(rng: np.random.Generator, camera: Camera, height: int, wide_verge: bool) -> Street:
    """Random cross-section; ``wide_verge`` guarantees a terrain strip (rare-class schedule)."""
    verges = [rng.uniform(1.0, 4.0) if rng.random() < 0.35 else 0.0 for _ in SIDES]
    if wide_verge:
        verges[int(rng.integers(2))] = rng.uniform(2.5, 4.5)
    return Street(
        road_left=-rng.uniform(2.0, 7.5),
        road_right=rng.uniform(2.0, 7.5),
        sidewalk_widths=(rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0)),
        verge_widths=(verges[0], verges[1]),
        sun_side=int(rng.choice(SIDES)),
        near=camera.ground_depth(height),
    )


def rectangle(left: float, top: float, right: float, bottom: float) -> list[tuple[float, float]]:
    return [(left, top), (right, top), (right, bottom), (left, bottom)]


def draw_ground(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Sky gradient, terrain, sidewalks and road (the label of everything not drawn later)."""
    camera, style, width = canvas.camera, canvas.style, canvas.width
    sky = pick_color(rng, style, TrainId.SKY)
    for band in range(8):  # lighter toward the horizon
        tint = tuple(int(channel + (255 - channel) * 0.3 * band / 8) for channel in sky)
        top, bottom = band * camera.horizon_y / 8, (band + 1) * camera.horizon_y / 8 + 1
        canvas.polygon(rectangle(0, top, width, bottom), None, tint)  # type: ignore[arg-type]
    horizon = camera.point(0, 0, street.far)[1]
    canvas.polygon(
        rectangle(0, horizon, width, canvas.height), TrainId.TERRAIN, pick_color(rng, style, TrainId.TERRAIN)
    )
    for side in SIDES:
        inner, outer = sorted((street.kerb(side), street.outer(side)))
        sidewalk = camera.flat(inner, outer, 0, 0.5, street.far)
        canvas.polygon(sidewalk, TrainId.SIDEWALK, pick_color(rng, style, TrainId.SIDEWALK))
    road = camera.flat(street.road_left, street.road_right, 0, 0.5, street.far)
    canvas.polygon(road, TrainId.ROAD, pick_color(rng, style, TrainId.ROAD))
    _draw_markings(canvas, street, rng)


def _draw_markings(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Edge lines, dashed lane lines and sometimes a zebra crossing: colour only, labelled road."""
    camera, marking = canvas.camera, canvas.style.marking_color
    for edge in (street.road_left + 0.25, street.road_right - 0.4):
        canvas.polygon(camera.flat(edge, edge + 0.15, 0, 0.5, street.far), None, marking)
    for lane in np.arange(street.road_left + 3.2, street.road_right - 1.6, 3.2):
        for near in np.arange(rng.uniform(0.0, 9.0), 80.0, 9.0):
            canvas.polygon(camera.flat(lane - 0.07, lane + 0.07, 0, max(near, 0.5), near + 3.0), None, marking)
    if rng.random() < 0.15:
        crossing = rng.uniform(8.0, 25.0)
        for stripe in np.arange(street.road_left + 0.4, street.road_right - 0.4, 1.0):
            canvas.polygon(camera.flat(stripe, stripe + 0.5, 0, crossing, crossing + 3.0), None, marking)


def draw_skyline(canvas: Canvas, street: Street, rng: np.random.Generator) -> None:
    """Distant blocks and tree lines at the draw distance, kept below the top rows so sky always shows."""
    camera, style = canvas.camera, canvas.style
    highest = camera.height_m + 0.88 * camera.horizon_y * street.far / camera.focal
    base = camera.point(0, 0, street.far)[1] + 1
    x = -5.0
    while x < canvas.width:
        block = camera.pixels(rng.uniform(10.0, 45.0), street.far)
        top = camera.point(0, min(rng.uniform(3.0, 24.0), highest), street.far)[1]
        if rng.random() < 0.3:  # tree line: crowns over a solid band, never reaching below the base
            radii = (max(block / 2, 2.0), max(min(block * 0.4, (base - top) / 2), 1.0))
            color = pick_color(rng, style, TrainId.VEGETATION)
            canvas.ellipse((x + radii[0], top + radii[1]), radii, TrainId.VEGETATION, color)
            canvas.polygon(rectangle(x, top + radii[1], x + block, base), TrainId.VEGETATION, color)
        elif rng.random() < 0.85:
            canvas.polygon(
                rectangle(x, top, x + block, base), TrainId.BUILDING, pick_color(rng, style, TrainId.BUILDING)
            )
        x += block


def draw_facade(
    canvas: Canvas, lateral: float, span: tuple[float, float], height: float, color: Color, shadow: float
) -> None:
    """Building side along the road with a window grid; ``shadow`` > 0 darkens it and casts a shadow."""
    camera, near, far = canvas.camera, span[0], span[1]
    if shadow > 0:
        color = shade(color, 1.0 - 0.7 * shadow)
        reach = -np.sign(lateral) * min(height * 0.5, 12.0)  # toward the road
        canvas.cast_shadow(camera.flat(min(lateral, lateral + reach), max(lateral, lateral + reach), 0, near, far))
    canvas.polygon(camera.side(lateral, 0, height, near, far), TrainId.BUILDING, color)
    floors = int(height / FLOOR)
    for floor in range(floors):
        bottom = floor * FLOOR + (0.3 if floor == 0 else 1.0)  # shop windows on the ground floor
        window_band = camera.side(lateral, bottom, floor * FLOOR + 2.4, near + 0.6, far - 0.6)
        canvas.polygon(window_band, None, canvas.style.window_color)
    for pillar in np.arange(near + 1.8, far - 1.0, 3.0):
        canvas.polygon(camera.side(lateral, 0.8, floors * FLOOR + 0.1, pillar, pillar + 1.3), None, color)
    cornice = [camera.point(lateral, height, near), camera.point(lateral, height, far)]
    canvas.line(cornice, TrainId.BUILDING, shade(color, 0.7), camera.pixels(0.3, near))


def facade_item(
    rng: np.random.Generator, canvas: Canvas, lateral: float, span: tuple[float, float], shadow: float
) -> Item:
    color, height = pick_color(rng, canvas.style, TrainId.BUILDING), rng.uniform(7.0, 26.0)
    draw = partial(draw_facade, lateral=lateral, span=span, height=height, color=color, shadow=shadow)
    return (OUTER_LAYER, span[0], draw)


def draw_tree(canvas: Canvas, lateral: float, depth: float, trunk: float, crown: tuple[tuple, ...]) -> None:
    """Trunk and a crown of ellipses (offset x, offset y, radius, colour); all of it vegetation."""
    camera = canvas.camera
    stem = camera.face(lateral - 0.15, lateral + 0.15, 0, trunk + 1.0, depth)
    canvas.polygon(stem, TrainId.VEGETATION, canvas.style.trunk_color)
    for offset_x, offset_y, radius, color in crown:
        center = camera.point(lateral + offset_x, trunk + offset_y, depth)
        radii = (camera.pixels(radius, depth), camera.pixels(radius * 0.85, depth))
        canvas.ellipse(center, radii, TrainId.VEGETATION, color)


def tree_item(
    rng: np.random.Generator, canvas: Canvas, lateral: float, depth: float, layer: int, scale: float = 1.0
) -> Item:
    radius = rng.uniform(1.2, 2.6) * scale
    crown = tuple(
        (
            rng.uniform(-0.7, 0.7) * radius,
            rng.uniform(0.6, 1.3) * radius,  # crowns stay above about the trunk's height
            rng.uniform(0.6, 1.0) * radius,
            pick_color(rng, canvas.style, TrainId.VEGETATION),
        )
        for _ in range(int(rng.integers(3, 6)))
    )
    trunk = rng.uniform(2.0, 4.0) * scale
    return (layer, depth, partial(draw_tree, lateral=lateral, depth=depth, trunk=trunk, crown=crown))


def draw_barrier(
    canvas: Canvas, lateral: float, span: tuple[float, float], height: float, class_id: int, color: Color
) -> None:
    """Wall (solid, with a coping) or fence (panel with posts and a rail) along the road."""
    camera, near, far = canvas.camera, span[0], span[1]
    canvas.polygon(camera.side(lateral, 0, height, near, far), class_id, color)
    canvas.polygon(camera.face(lateral - 0.15, lateral + 0.15, 0, height, near), class_id, shade(color, 1.15))
    detail = shade(color, 0.55 if class_id == TrainId.FENCE else 1.25)
    rails = (height, height * 0.5) if class_id == TrainId.FENCE else (height,)
    for rail in rails:
        points = [camera.point(lateral, rail, near), camera.point(lateral, rail, far)]
        canvas.line(points, None, detail, camera.pixels(0.1, near))
    for post in np.arange(near, far, 2.0) if class_id == TrainId.FENCE else ():
        points = [camera.point(lateral, 0, post), camera.point(lateral, height, post)]
        canvas.line(points, None, detail, camera.pixels(0.08, post))


def barrier_item(
    rng: np.random.Generator,
    canvas: Canvas,
    street: Street,
    class_id: int,
    span: tuple[float, float | None],
    lateral: float | None = None,
) -> Item:
    """Wall or fence from span[0] to span[1] (None: a random length) at the sidewalk's outer edge."""
    lateral = street.outer(int(rng.choice(SIDES))) if lateral is None else lateral
    near, far = span[0], span[1] if span[1] is not None else span[0] + rng.uniform(6.0, 25.0)
    height = rng.uniform(0.8, 2.2) if class_id == TrainId.WALL else rng.uniform(1.0, 2.0)
    color = pick_color(rng, canvas.style, class_id)
    draw = partial(draw_barrier, lateral=lateral, span=(near, far), height=height, class_id=class_id, color=color)
    return (KERB_LAYER, near, draw)


def place_buildings(rng: np.random.Generator, canvas: Canvas, street: Street) -> list[Item]:
    """Façades along both building lines; gaps between them hold trees, walls or open terrain."""
    items: list[Item] = []
    for side in SIDES:
        lateral, depth = street.building_line(side), rng.uniform(0.8, 6.0)
        shadow = canvas.style.shadow_strength if side == street.sun_side else 0.0
        while depth < street.far:
            length = rng.uniform(8.0, 35.0)
            if rng.random() < 0.22:  # a gap
                length *= 0.5
                content = rng.random()
                if content < 0.5:
                    items.append(tree_item(rng, canvas, lateral + side * 2.0, depth + length / 2, OUTER_LAYER, 1.4))
                elif content < 0.75:
                    items.append(barrier_item(rng, canvas, street, TrainId.WALL, (depth, None), lateral=lateral))
            else:
                items.append(facade_item(rng, canvas, lateral, (depth, depth + length), shadow))
            depth += length
    return items
