"""SynthCity street furniture: poles with lamps, signs and signals, and the street's trees and barriers.

Poles stand on the sidewalk half a metre from the kerb, in rows with random spacing; lamp and
overhead-signal arms reach over the road.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from clda_deploy.data.synthcity.objects import Canvas, TrainId, pick_color, shade
from clda_deploy.data.synthcity.street import SIDES, STREET_LAYER, Item, Street, barrier_item, rectangle, tree_item
from clda_deploy.data.synthcity.style import Color

SIGNAL_COLORS = ((255, 40, 30), (255, 190, 0), (40, 255, 120))
POLE_HEIGHTS = {
    "lamp": (6.0, 9.0),
    "plain": (3.0, 8.0),
    "sign": (2.6, 3.4),
    "light": (3.4, 4.4),
    "overhead": (5.0, 6.0),
}


def _draw_sign(canvas: Canvas, lateral: float, depth: float, top: float, color: Color, shape: int) -> None:
    """Round, triangular or square plate with a light inner mark."""
    camera, marking = canvas.camera, canvas.style.marking_color
    (x, y), radius = camera.point(lateral, top - 0.35, depth), camera.pixels(0.34, depth)
    if shape == 0:
        canvas.ellipse((x, y), (radius, radius), TrainId.TRAFFIC_SIGN, color)
        canvas.ellipse((x, y), (radius * 0.65, radius * 0.65), None, marking)
        return
    triangle = [(x - radius, y + radius), (x + radius, y + radius), (x, y - radius)]
    plate = triangle if shape == 1 else rectangle(x - radius, y - radius, x + radius, y + radius)
    canvas.polygon(plate, TrainId.TRAFFIC_SIGN, color)
    canvas.ellipse((x, y), (radius * 0.35, radius * 0.35), None, marking)


def _draw_signal(canvas: Canvas, lateral: float, depth: float, top: float, color: Color, lit: int) -> None:
    """Signal head with three lamps, one of them lit."""
    camera = canvas.camera
    canvas.polygon(camera.face(lateral - 0.2, lateral + 0.2, top - 1.0, top, depth), TrainId.TRAFFIC_LIGHT, color)
    for lamp, lamp_color in enumerate(SIGNAL_COLORS):
        center = camera.point(lateral, top - 0.2 - 0.3 * lamp, depth)
        radius = camera.pixels(0.11, depth)
        canvas.ellipse(center, (radius, radius), None, lamp_color if lamp == lit else shade(lamp_color, 0.25))


def draw_pole(
    canvas: Canvas,
    lateral: float,
    depth: float,
    side: int,
    kind: str,
    height: float,
    colors: tuple[Color, Color],
    detail: int,
) -> None:
    """Pole with its attachment: "lamp", "plain", "sign", "light" (signal head), "overhead" (signal on an arm)."""
    camera, (pole_color, part_color) = canvas.camera, colors
    canvas.polygon(camera.face(lateral - 0.09, lateral + 0.09, 0, height, depth), TrainId.POLE, pole_color)
    if kind in ("lamp", "overhead"):
        reach = lateral - side * (1.6 if kind == "lamp" else 4.0)  # the arm points over the road
        arm = [camera.point(lateral, height, depth), camera.point(reach, height + 0.2, depth)]
        canvas.line(arm, TrainId.POLE, pole_color, camera.pixels(0.12, depth))
        if kind == "lamp":
            radii = (camera.pixels(0.35, depth), camera.pixels(0.12, depth))
            canvas.ellipse(camera.point(reach, height + 0.1, depth), radii, TrainId.POLE, shade(pole_color, 1.2))
        else:
            _draw_signal(canvas, reach, depth, height + 0.1, part_color, detail)
    elif kind == "sign":
        _draw_sign(canvas, lateral, depth, height, part_color, detail)
    elif kind == "light":
        _draw_signal(canvas, lateral, depth, height, part_color, detail)


def pole_item(
    rng: np.random.Generator, canvas: Canvas, street: Street, kind: str, depth: float, side: int | None = None
) -> Item:
    side = int(rng.choice(SIDES)) if side is None else side
    part_class = TrainId.TRAFFIC_SIGN if kind == "sign" else TrainId.TRAFFIC_LIGHT
    colors = (pick_color(rng, canvas.style, TrainId.POLE), pick_color(rng, canvas.style, part_class))
    height, detail = rng.uniform(*POLE_HEIGHTS[kind]), int(rng.integers(3))
    lateral = street.kerb(side) + side * 0.5
    draw = partial(
        draw_pole, lateral=lateral, depth=depth, side=side, kind=kind, height=height, colors=colors, detail=detail
    )
    return (STREET_LAYER, depth, draw)


def place_street_furniture(rng: np.random.Generator, canvas: Canvas, street: Street) -> list[Item]:
    """Rows of poles (lamps, signs, signals) and street trees, and walls and fences at the sidewalk edge."""
    items: list[Item] = []
    kinds, weights = ("lamp", "plain", "sign", "light"), (0.4, 0.15, 0.3, 0.15)
    for side in SIDES:
        if rng.random() < 0.85:
            for depth in np.arange(rng.uniform(street.near, 20.0), 70.0, rng.uniform(12.0, 30.0)):
                items.append(pole_item(rng, canvas, street, str(rng.choice(kinds, p=weights)), float(depth), side))
        if rng.random() < 0.5:
            for depth in np.arange(rng.uniform(street.near, 16.0), 70.0, rng.uniform(8.0, 18.0)):
                items.append(tree_item(rng, canvas, street.outer(side) - side * 0.8, float(depth), STREET_LAYER))
    if rng.random() < 0.12:
        items.append(pole_item(rng, canvas, street, "overhead", rng.uniform(15.0, 40.0)))
    for class_id, probability in ((TrainId.WALL, 0.25), (TrainId.FENCE, 0.3)):
        if rng.random() < probability:
            items.append(barrier_item(rng, canvas, street, class_id, (rng.uniform(street.near, 40.0), None)))
    return items
