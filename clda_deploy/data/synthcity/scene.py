"""SynthCity scene layout: camera, street, traffic and people, and the rare-class schedule.

Class frequencies are long-tailed on purpose (trains, motorcycles and riders are rare), yet every class
must show up often enough to be learnable and evaluable: class c owns slot 2c of every run of
``SCHEDULE_PERIOD`` images, and the image in that slot gets a clearly visible instance of it. So any
``SCHEDULE_PERIOD`` consecutive images contain all 19 classes.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from clda_deploy.data.labels import NUM_CLASSES
from clda_deploy.data.synthcity.furniture import place_street_furniture, pole_item
from clda_deploy.data.synthcity.objects import (
    Camera,
    Canvas,
    TrainId,
    draw_crossing_train,
    draw_person,
    draw_rider,
    draw_two_wheeler,
    draw_vehicle,
    pick_color,
    shade,
)
from clda_deploy.data.synthcity.street import (
    SIDES,
    STREET_LAYER,
    Item,
    Street,
    barrier_item,
    draw_ground,
    draw_skyline,
    facade_item,
    place_buildings,
    sample_street,
    tree_item,
)
from clda_deploy.data.synthcity.style import DomainStyle

SCHEDULE_PERIOD = 40
FALLBACK_LAYER = -1  # items drawn only when their scheduled class ended up hidden
VEHICLE_HALF_WIDTHS = {TrainId.CAR: 0.9, TrainId.TRUCK: 1.25, TrainId.BUS: 1.3, TrainId.TRAIN: 1.35}


def scheduled_classes(index: int) -> frozenset[int]:
    """Classes image ``index`` must contain: class c owns slot 2c of every period of 40 images."""
    slot = index % SCHEDULE_PERIOD
    return frozenset({slot // 2}) if slot % 2 == 0 and slot // 2 < NUM_CLASSES else frozenset()


def sample_camera(rng: np.random.Generator, style: DomainStyle, height: int, width: int) -> Camera:
    return Camera(
        focal=width * rng.uniform(0.9, 1.05),
        center_x=width * rng.uniform(0.45, 0.55),
        horizon_y=height * rng.uniform(*style.horizon_range),
        height_m=rng.uniform(*style.camera_height_range),
    )


def _log_depth(rng: np.random.Generator, near: float, far: float) -> float:
    """Depth with a log-uniform law: objects spread evenly over image rows, as along a real road."""
    return float(math.exp(rng.uniform(math.log(near), math.log(max(far, near + 1e-3)))))


def _on_sidewalk(rng: np.random.Generator, street: Street) -> float:
    side = int(rng.choice(SIDES))
    inner, outer = sorted((street.kerb(side) + side * 0.3, street.outer(side) - side * 0.3))
    return rng.uniform(inner, outer)


def _in_lane(rng: np.random.Generator, street: Street, half_width: float) -> float:
    low, high = street.road_left + half_width + 0.3, street.road_right - half_width - 0.3
    return rng.uniform(low, high) if low < high else (low + high) / 2


def vehicle_item(
    rng: np.random.Generator, canvas: Canvas, street: Street, kind: int, depth: float, parked: bool = False
) -> Item:
    size = rng.uniform(*canvas.style.object_scale_range) * (0.92 if kind == TrainId.TRAIN else 1.0)
    half_width = VEHICLE_HALF_WIDTHS[kind] * size
    side = int(rng.choice(SIDES))
    lateral = street.kerb(side) - side * (half_width + 0.2) if parked else _in_lane(rng, street, half_width)
    color = pick_color(rng, canvas.style, kind)
    return (STREET_LAYER, depth, partial(draw_vehicle, kind=kind, lateral=lateral, depth=depth, size=size, color=color))


def train_item(rng: np.random.Generator, canvas: Canvas, street: Street, depth: float) -> Item:
    """A tram along the road or, half of the time, a train crossing the street further back."""
    if rng.random() < 0.5:
        return vehicle_item(rng, canvas, street, TrainId.TRAIN, depth)
    camera, depth = canvas.camera, depth + 20.0
    span = (
        -(camera.center_x + 20) * depth / camera.focal,
        (canvas.width - camera.center_x + 20) * depth / camera.focal,
    )
    color = pick_color(rng, canvas.style, TrainId.TRAIN)
    return (STREET_LAYER, depth, partial(draw_crossing_train, depth=depth, color=color, span=span))


def person_item(rng: np.random.Generator, canvas: Canvas, lateral: float, depth: float) -> Item:
    style = canvas.style
    height = 1.75 * rng.uniform(*style.object_scale_range) * rng.uniform(0.9, 1.08)
    colors = (pick_color(rng, style, TrainId.PERSON), shade(pick_color(rng, style, TrainId.PERSON), 0.6))
    draw = partial(draw_person, lateral=lateral, depth=depth, height=height, colors=colors, stride=rng.uniform())
    return (STREET_LAYER, depth, draw)


def _draw_ride(
    canvas: Canvas, kind: int, lateral: float, depth: float, heading: int, colors: tuple, ridden: bool
) -> None:
    draw_two_wheeler(canvas, kind, lateral, depth, heading, colors[0])
    if ridden:
        draw_rider(canvas, lateral, depth, heading, colors[1], seat=0.95 if kind == TrainId.BICYCLE else 1.0)


def ride_item(
    rng: np.random.Generator,
    canvas: Canvas,
    street: Street,
    kind: int,
    depth: float,
    ridden: bool,
    lateral: float | None = None,
) -> Item:
    """A ridden two-wheeler crossing the road, or a parked one on the sidewalk."""
    if lateral is None:
        lateral = _in_lane(rng, street, 0.7) if ridden else _on_sidewalk(rng, street)
    colors = (pick_color(rng, canvas.style, kind), pick_color(rng, canvas.style, TrainId.RIDER))
    heading = int(rng.choice(SIDES))
    draw = partial(_draw_ride, kind=kind, lateral=lateral, depth=depth, heading=heading, colors=colors, ridden=ridden)
    return (STREET_LAYER, depth, draw)


def place_traffic(rng: np.random.Generator, canvas: Canvas, street: Street) -> list[Item]:
    """Vehicles, pedestrians and two-wheelers with long-tailed counts (scaled by the traffic density)."""
    density, near = canvas.style.traffic_density, street.near
    items: list[Item] = []
    for kind, mean in ((TrainId.CAR, 2.2), (TrainId.TRUCK, 0.3), (TrainId.BUS, 0.2)):
        for _ in range(rng.poisson(mean * density)):
            items.append(vehicle_item(rng, canvas, street, kind, _log_depth(rng, near + 1.0, 80.0)))
    for _ in SIDES:  # a row of parked cars on either side
        if rng.random() < 0.5:
            for depth in np.arange(rng.uniform(near, 20.0), 60.0, rng.uniform(5.5, 9.0)):
                if rng.random() < 0.7:
                    items.append(vehicle_item(rng, canvas, street, TrainId.CAR, float(depth), parked=True))
    if rng.random() < 0.04:
        items.append(train_item(rng, canvas, street, _log_depth(rng, near + 8.0, 60.0)))
    for _ in range(rng.poisson(2.5 * density)):
        items.append(person_item(rng, canvas, _on_sidewalk(rng, street), _log_depth(rng, near * 0.9, 60.0)))
    if rng.random() < 0.1:  # a group crossing the road
        depth = rng.uniform(near + 2.0, 30.0)
        for _ in range(int(rng.integers(2, 5))):
            lateral = rng.uniform(street.road_left, street.road_right)
            items.append(person_item(rng, canvas, lateral, depth + rng.uniform(0.0, 1.5)))
    for kind, ridden, mean in (
        (TrainId.BICYCLE, True, 0.25),
        (TrainId.MOTORCYCLE, True, 0.04),
        (TrainId.BICYCLE, False, 0.25),
        (TrainId.MOTORCYCLE, False, 0.04),
    ):
        for _ in range(rng.poisson(mean * density)):
            items.append(ride_item(rng, canvas, street, kind, _log_depth(rng, near + 1.0, 45.0), ridden))
    return items


def _visible(canvas: Canvas, lateral: float, depth: float, top: float = 0.0) -> float:
    """``depth`` pushed back until ``lateral`` projects into the middle 80% of the image columns and a
    point ``top`` metres high stays below the top tenth of the sky."""
    camera = canvas.camera
    above_eye = max(top - camera.height_m, 0.0)
    return max(
        depth, camera.focal * abs(lateral) / (0.4 * canvas.width), camera.focal * above_eye / (0.9 * camera.horizon_y)
    )


def _draw_patch(canvas: Canvas, points: list, class_id: int, color: tuple) -> None:
    canvas.polygon(points, class_id, color)


def _patch_item(rng: np.random.Generator, canvas: Canvas, street: Street, class_id: int) -> Item:
    """Fallback for classes every layout contains (road, sidewalk, terrain, sky): a small patch in view."""
    camera, color = canvas.camera, pick_color(rng, canvas.style, class_id)
    if class_id == TrainId.SKY:
        top = max(2.0, 0.1 * camera.horizon_y)
        points = [
            (0.35 * canvas.width, 0.0),
            (0.65 * canvas.width, 0.0),
            (0.65 * canvas.width, top),
            (0.35 * canvas.width, top),
        ]
    else:
        lateral = {TrainId.ROAD: 0.0, TrainId.SIDEWALK: street.kerb(1) + 0.2}.get(class_id, street.outer(1) + 0.2)
        near = _visible(canvas, lateral, street.near)
        points = camera.flat(lateral, lateral + 1.0, 0.0, near, near + 3.0)
    return (FALLBACK_LAYER, 0.0, partial(_draw_patch, points=points, class_id=class_id, color=color))


def forced_item(rng: np.random.Generator, canvas: Canvas, street: Street, class_id: int) -> Item:
    """A clearly visible instance of a scheduled class."""
    near, side = street.near, int(rng.choice(SIDES))
    depth = rng.uniform(near + 2.0, near + 14.0)
    if class_id in (TrainId.CAR, TrainId.TRUCK, TrainId.BUS):
        return vehicle_item(rng, canvas, street, class_id, _visible(canvas, 4.0, depth + 4.0))
    if class_id in (TrainId.WALL, TrainId.FENCE, TrainId.BUILDING):
        lateral = street.building_line(side) if class_id == TrainId.BUILDING else street.outer(side)
        far = _visible(canvas, lateral, near + rng.uniform(15.0, 30.0)) + 5.0  # long enough to reach into view
        if class_id == TrainId.BUILDING:
            return facade_item(rng, canvas, lateral, (near, far), shadow=0.0)
        return barrier_item(rng, canvas, street, class_id, (near, far), lateral=lateral)
    if class_id in (TrainId.POLE, TrainId.TRAFFIC_LIGHT, TrainId.TRAFFIC_SIGN):
        kind = {TrainId.POLE: "lamp", TrainId.TRAFFIC_LIGHT: "light"}.get(class_id, "sign")
        return pole_item(
            rng, canvas, street, kind, _visible(canvas, street.kerb(side) + side * 0.5, depth, top=4.5), side
        )
    if class_id in (TrainId.PERSON, TrainId.BICYCLE):
        lateral = _on_sidewalk(rng, street)
    else:
        lateral = _in_lane(rng, street, 0.7)
    depth = _visible(canvas, lateral, depth)
    if class_id == TrainId.PERSON:
        return person_item(rng, canvas, lateral, depth)
    if class_id in (TrainId.RIDER, TrainId.BICYCLE, TrainId.MOTORCYCLE):
        kind = TrainId.MOTORCYCLE if class_id == TrainId.MOTORCYCLE else TrainId.BICYCLE
        return ride_item(rng, canvas, street, kind, depth, ridden=class_id != TrainId.BICYCLE, lateral=lateral)
    if class_id == TrainId.TRAIN:
        return train_item(rng, canvas, street, _visible(canvas, 4.0, rng.uniform(near + 10.0, 40.0)))
    if class_id == TrainId.VEGETATION:
        lateral = street.outer(side) - side * 0.8
        return tree_item(rng, canvas, lateral, _visible(canvas, lateral, depth), STREET_LAYER)
    return _patch_item(rng, canvas, street, class_id)


def render_layout(
    rng: np.random.Generator, style: DomainStyle, height: int, width: int, forced: frozenset[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, Camera]:
    """Flat-coloured scene: rgb uint8 [H,W,3], trainIds uint8 [H,W], cast-shadow mask uint8 [H,W], camera."""
    camera = sample_camera(rng, style, height, width)
    street = sample_street(rng, camera, height, wide_verge=TrainId.TERRAIN in forced)
    canvas = Canvas(height, width, camera, style)
    draw_ground(canvas, street, rng)
    draw_skyline(canvas, street, rng)
    items = place_buildings(rng, canvas, street) + place_street_furniture(rng, canvas, street)
    items += place_traffic(rng, canvas, street)
    guaranteed = {class_id: forced_item(rng, canvas, street, class_id) for class_id in sorted(forced)}
    items += [item for item in guaranteed.values() if item[0] != FALLBACK_LAYER]
    for _, _, draw in sorted(items, key=lambda item: (item[0], -item[1])):  # by layer, then far to near
        draw(canvas)
    labels = np.asarray(canvas.labels)
    counts = np.bincount(labels.ravel(), minlength=256)
    minimum = max(4, int(2e-4 * height * width))
    hidden = [item for class_id, item in guaranteed.items() if counts[class_id] < minimum]
    for _, _, draw in hidden:  # occluded by something nearer: draw it again on top
        draw(canvas)
    if hidden:
        labels = np.asarray(canvas.labels)
    return np.asarray(canvas.rgb), labels, np.asarray(canvas.shadow), camera
