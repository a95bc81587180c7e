"""SynthCity drawing primitives: a pinhole camera over a flat road, and the road users.

Objects are composed of flat faces projected with one-point perspective (depth along the road),
so that their image size follows their distance. Every shape is drawn twice (``Canvas``): its
colour into the RGB image and, unless it is a mere surface detail, its class into the label map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from clda_deploy.data.labels import CITYSCAPES_CLASSES
from clda_deploy.data.synthcity.style import Color, DomainStyle


class TrainId:
    """Cityscapes trainIds under readable names. The numbers are looked up in the class order of
    ``clda_deploy.data.labels``, the one place it is spelled, so the labels drawn here are the ids
    the writer maps to labelIds and the loaders map back."""

    ROAD = CITYSCAPES_CLASSES.index("road")
    SIDEWALK = CITYSCAPES_CLASSES.index("sidewalk")
    BUILDING = CITYSCAPES_CLASSES.index("building")
    WALL = CITYSCAPES_CLASSES.index("wall")
    FENCE = CITYSCAPES_CLASSES.index("fence")
    POLE = CITYSCAPES_CLASSES.index("pole")
    TRAFFIC_LIGHT = CITYSCAPES_CLASSES.index("traffic light")
    TRAFFIC_SIGN = CITYSCAPES_CLASSES.index("traffic sign")
    VEGETATION = CITYSCAPES_CLASSES.index("vegetation")
    TERRAIN = CITYSCAPES_CLASSES.index("terrain")
    SKY = CITYSCAPES_CLASSES.index("sky")
    PERSON = CITYSCAPES_CLASSES.index("person")
    RIDER = CITYSCAPES_CLASSES.index("rider")
    CAR = CITYSCAPES_CLASSES.index("car")
    TRUCK = CITYSCAPES_CLASSES.index("truck")
    BUS = CITYSCAPES_CLASSES.index("bus")
    TRAIN = CITYSCAPES_CLASSES.index("train")
    MOTORCYCLE = CITYSCAPES_CLASSES.index("motorcycle")
    BICYCLE = CITYSCAPES_CLASSES.index("bicycle")


Point = tuple[float, float]
Extent = tuple[float, float, float, float, float, float]  # left, right, bottom, top, near, far (metres)
_LIMIT = 1.0e5  # pixel coordinates are clamped so that points right beside the camera stay finite
TAIL_LIGHT = (200, 20, 20)


def shade(color: Color, factor: float) -> Color:
    """``color`` scaled in brightness (faces turned away from the light, dark details)."""
    return tuple(min(255, max(0, int(channel * factor))) for channel in color)  # type: ignore[return-value]


def pick_color(rng: np.random.Generator, style: DomainStyle, class_id: int) -> Color:
    """One of the class's material colours, jittered mostly in brightness so that the hue stays."""
    materials = style.palette[class_id]
    base = np.asarray(materials[int(rng.integers(len(materials)))], dtype=np.float64)
    jitter = rng.normal(0.0, style.color_jitter) + rng.normal(0.0, 0.3 * style.color_jitter, 3)
    return tuple(int(value) for value in np.clip(base + jitter, 0, 255))  # type: ignore[return-value]


@dataclass(frozen=True)
class Camera:
    """Pinhole camera ``height_m`` above a flat road, looking along it (depth = metres ahead)."""

    focal: float
    center_x: float
    horizon_y: float
    height_m: float

    def point(self, lateral: float, up: float, depth: float) -> Point:
        x = self.center_x + self.focal * lateral / depth
        y = self.horizon_y + self.focal * (self.height_m - up) / depth
        return (min(max(x, -_LIMIT), _LIMIT), min(max(y, -_LIMIT), _LIMIT))

    def pixels(self, metres: float, depth: float) -> float:
        return self.focal * metres / depth

    def ground_depth(self, row: float) -> float:
        """Depth of the road seen at image row ``row`` (below the horizon)."""
        return self.focal * self.height_m / max(row - self.horizon_y, 1e-3)

    def face(self, left: float, right: float, bottom: float, top: float, depth: float) -> list[Point]:
        """Rectangle facing the camera at one depth."""
        corners = ((left, bottom), (right, bottom), (right, top), (left, top))
        return [self.point(lateral, up, depth) for lateral, up in corners]

    def side(self, lateral: float, bottom: float, top: float, near: float, far: float) -> list[Point]:
        """Rectangle in the vertical plane at ``lateral``, running along the road."""
        corners = ((bottom, near), (top, near), (top, far), (bottom, far))
        return [self.point(lateral, up, depth) for up, depth in corners]

    def flat(self, left: float, right: float, up: float, near: float, far: float) -> list[Point]:
        """Horizontal rectangle at height ``up`` (the road when up = 0, roofs otherwise)."""
        corners = ((left, near), (right, near), (right, far), (left, far))
        return [self.point(lateral, up, depth) for lateral, depth in corners]


class Canvas:
    """One scene being drawn back to front: RGB image, label map and cast-shadow mask, with the
    camera and style every drawing function needs."""

    def __init__(self, height: int, width: int, camera: Camera, style: DomainStyle) -> None:
        self.height, self.width, self.camera, self.style = height, width, camera, style
        self.rgb = Image.new("RGB", (width, height))
        self.labels = Image.new("L", (width, height), TrainId.SKY)
        self.shadow = Image.new("L", (width, height), 0)
        self._rgb_draw = ImageDraw.Draw(self.rgb)
        self._label_draw = ImageDraw.Draw(self.labels)
        self._shadow_draw = ImageDraw.Draw(self.shadow)

    def polygon(self, points: Sequence[Point], class_id: int | None, color: Color) -> None:
        """Filled polygon; ``class_id`` None paints colour only (windows, markings, lamps)."""
        self._rgb_draw.polygon(points, fill=color)
        if class_id is not None:
            self._label_draw.polygon(points, fill=class_id)

    def ellipse(self, center: Point, radii: Point, class_id: int | None, color: Color, ring: float = 0) -> None:
        """Filled ellipse, or a ring ``ring`` pixels wide (bicycle wheels) when ring > 0."""
        radius_x, radius_y = max(radii[0], 0.5), max(radii[1], 0.5)
        box = [center[0] - radius_x, center[1] - radius_y, center[0] + radius_x, center[1] + radius_y]
        width = max(1, round(ring))
        self._rgb_draw.ellipse(box, fill=None if ring else color, outline=color if ring else None, width=width)
        if class_id is not None:
            fill, outline = (None, class_id) if ring else (class_id, None)
            self._label_draw.ellipse(box, fill=fill, outline=outline, width=width)

    def line(self, points: Sequence[Point], class_id: int | None, color: Color, width: float) -> None:
        pixels = max(1, round(width))
        self._rgb_draw.line(points, fill=color, width=pixels)
        if class_id is not None:
            self._label_draw.line(points, fill=class_id, width=pixels)

    def cast_shadow(self, points: Sequence[Point]) -> None:
        """Mark a shadow on the ground; the style darkens it where the final labels are ground."""
        self._shadow_draw.polygon(points, fill=255)


def draw_box(canvas: Canvas, extent: Extent, class_id: int, color: Color) -> None:
    """Box seen from behind: the side facing the optical axis, the roof if below the eye, the back."""
    left, right, bottom, top, near, far = extent
    camera = canvas.camera
    if left > 0 or right < 0:
        lateral = left if left > 0 else right
        canvas.polygon(camera.side(lateral, bottom, top, near, far), class_id, shade(color, 0.78))
    if top < camera.height_m:
        canvas.polygon(camera.flat(left, right, top, near, far), class_id, shade(color, 1.12))
    canvas.polygon(camera.face(left, right, bottom, top, near), class_id, color)


def draw_wheels(canvas: Canvas, extent: Extent, radius: float, class_id: int) -> None:
    """Wheels of a road vehicle, drawn before its body: two on the visible side and two under the back."""
    left, right, _, _, near, far = extent
    camera, color = canvas.camera, canvas.style.tyre_color
    if left > 0 or right < 0:
        lateral, length = (left if left > 0 else right), far - near
        for axle in (near + 0.18 * length, far - 0.18 * length):
            radii = (camera.pixels(radius * 0.45, axle), camera.pixels(radius, axle))
            canvas.ellipse(camera.point(lateral, radius, axle), radii, class_id, color)
    width = right - left
    for start in (left + 0.04 * width, right - 0.26 * width):
        canvas.polygon(camera.face(start, start + 0.22 * width, 0, 2 * radius, near + 0.4), class_id, color)


VEHICLE_SIZES = {  # width, height, length in metres
    TrainId.CAR: (1.8, 1.5, 4.4),
    TrainId.TRUCK: (2.5, 3.5, 8.0),
    TrainId.BUS: (2.55, 3.2, 12.0),
    TrainId.TRAIN: (2.65, 3.6, 28.0),
}


def _draw_car(canvas: Canvas, lateral: float, depth: float, size: float, color: Color) -> None:
    width, height, length = (value * size for value in VEHICLE_SIZES[TrainId.CAR])
    left, right, far = lateral - width / 2, lateral + width / 2, depth + length
    draw_wheels(canvas, (left, right, 0, height, depth, far), 0.33 * size, TrainId.CAR)
    draw_box(canvas, (left, right, 0.22 * height, 0.62 * height, depth, far), TrainId.CAR, color)
    cabin_left, cabin_right, cabin_near = lateral - 0.42 * width, lateral + 0.42 * width, depth + 0.3 * length
    draw_box(
        canvas, (cabin_left, cabin_right, 0.62 * height, height, cabin_near, far - 0.25 * length), TrainId.CAR, color
    )
    camera = canvas.camera
    glass = camera.face(cabin_left + 0.08 * width, cabin_right - 0.08 * width, 0.67 * height, 0.94 * height, cabin_near)
    canvas.polygon(glass, None, canvas.style.window_color)
    for start in (left + 0.05 * width, right - 0.2 * width):
        lamp = camera.face(start, start + 0.15 * width, 0.45 * height, 0.55 * height, depth)
        canvas.polygon(lamp, None, TAIL_LIGHT)


def draw_vehicle(canvas: Canvas, kind: int, lateral: float, depth: float, size: float, color: Color) -> None:
    """Car, truck, bus or tram (train) driving away from the camera; ``size`` scales the metres."""
    if kind == TrainId.CAR:
        _draw_car(canvas, lateral, depth, size, color)
        return
    camera, window = canvas.camera, canvas.style.window_color
    width, height, length = (value * size for value in VEHICLE_SIZES[kind])
    left, right, far = lateral - width / 2, lateral + width / 2, depth + length
    draw_wheels(canvas, (left, right, 0, height, depth, far), 0.5 * size, kind)
    if kind == TrainId.TRUCK:  # cab in front (far end), cargo box behind it
        cab = (lateral - 0.48 * width, lateral + 0.48 * width, 0.15 * height, 0.8 * height, far - 0.25 * length, far)
        draw_box(canvas, cab, kind, shade(color, 0.9))
        draw_box(canvas, (left, right, 0.22 * height, height, depth, far - 0.27 * length), kind, color)
        door = [camera.point(lateral, 0.25 * height, depth), camera.point(lateral, height, depth)]
        canvas.line(door, None, shade(color, 0.6), camera.pixels(0.05, depth))
        return
    draw_box(canvas, (left, right, 0.15 * height, height, depth, far), kind, color)
    if left > 0 or right < 0:  # window band along the visible side
        band = camera.side(left if left > 0 else right, 0.55 * height, 0.88 * height, depth + 1.0, far - 1.0)
        canvas.polygon(band, None, window)
    canvas.polygon(
        camera.face(left + 0.1 * width, right - 0.1 * width, 0.6 * height, 0.9 * height, depth), None, window
    )
    if kind == TrainId.TRAIN:  # pantograph
        corners = (
            (lateral - 0.5, height, depth + 8),
            (lateral, height + 1.1, depth + 9),
            (lateral + 0.5, height, depth + 10),
        )
        roof = [camera.point(*corner) for corner in corners]
        canvas.line(roof, TrainId.TRAIN, shade(color, 0.5), camera.pixels(0.08, depth + 9))


def draw_crossing_train(canvas: Canvas, depth: float, color: Color, span: tuple[float, float]) -> None:
    """A train seen from the side, crossing the street at ``depth``; ``span`` is its lateral extent."""
    camera, style = canvas.camera, canvas.style
    left, right = span
    canvas.polygon(camera.face(left, right, 0.0, 0.7, depth), TrainId.TRAIN, style.tyre_color)
    canvas.polygon(camera.face(left, right, 0.6, 3.9, depth), TrainId.TRAIN, color)
    canvas.polygon(camera.face(left, right, 2.2, 3.2, depth), None, style.window_color)
    for pillar in np.arange(left, right, 2.5):
        canvas.polygon(camera.face(pillar, pillar + 0.5, 2.1, 3.3, depth), None, color)
    for joint in np.arange(left + 18.0, right, 18.0):
        canvas.polygon(camera.face(joint, joint + 0.6, 0.6, 3.9, depth), None, shade(color, 0.4))


def draw_person(
    canvas: Canvas, lateral: float, depth: float, height: float, colors: tuple[Color, Color], stride: float
) -> None:
    """Pedestrian facing the camera; ``stride`` in [0, 1] spreads the legs."""
    camera = canvas.camera
    shirt, trousers = colors
    half = 0.13 * height
    for sign in (-1, 1):
        foot, hip = lateral + sign * (0.04 + 0.1 * stride) * height, lateral + sign * 0.06 * height
        thigh, ankle = 0.045 * height, 0.035 * height
        corners = ((hip - thigh, 0.5), (hip + thigh, 0.5), (foot + ankle, 0.0), (foot - ankle, 0.0))
        leg = [camera.point(x, up * height, depth) for x, up in corners]
        canvas.polygon(leg, TrainId.PERSON, trousers)
        arm = camera.face(
            lateral + sign * half, lateral + sign * (half + 0.05 * height), 0.47 * height, 0.8 * height, depth
        )
        canvas.polygon(arm, TrainId.PERSON, shade(shirt, 0.85))
    torso = camera.face(lateral - half, lateral + half, 0.47 * height, 0.83 * height, depth)
    canvas.polygon(torso, TrainId.PERSON, shirt)
    radii = (camera.pixels(0.065 * height, depth), camera.pixels(0.085 * height, depth))
    canvas.ellipse(camera.point(lateral, 0.91 * height, depth), radii, TrainId.PERSON, canvas.style.skin_color)


def draw_two_wheeler(canvas: Canvas, kind: int, lateral: float, depth: float, heading: int, color: Color) -> None:
    """Bicycle or motorcycle seen from the side at ``depth``, heading left (-1) or right (+1)."""
    camera = canvas.camera

    def at(offset: float, up: float) -> Point:
        return camera.point(lateral + heading * offset, up, depth)

    bicycle = kind == TrainId.BICYCLE
    radius = 0.34 if bicycle else 0.32
    ring = camera.pixels(0.06, depth) if bicycle else 0.0
    for axle in (-0.52, 0.52):
        radii = (camera.pixels(radius, depth), camera.pixels(radius, depth))
        canvas.ellipse(at(axle, radius), radii, kind, canvas.style.tyre_color, ring=ring)
    if bicycle:
        frame = [(-0.52, 0.34), (0.0, 0.34), (-0.12, 0.88), (-0.52, 0.34), (0.0, 0.34), (0.42, 0.86), (0.52, 0.34)]
        frame += [(0.42, 0.86), (-0.12, 0.86), (-0.15, 0.92), (-0.05, 0.92)]
        canvas.line([at(*joint) for joint in frame], kind, color, camera.pixels(0.05, depth))
        canvas.line([at(0.42, 0.86), at(0.38, 1.0), at(0.5, 1.02)], kind, color, camera.pixels(0.04, depth))
        return
    body = [at(-0.6, 0.55), at(-0.25, 0.9), at(0.3, 0.95), at(0.55, 0.62), at(0.1, 0.38), at(-0.4, 0.42)]
    canvas.polygon(body, kind, color)
    handlebar = [at(0.35, 0.9), at(0.5, 1.12), at(0.4, 1.15)]
    canvas.line(handlebar, kind, shade(color, 0.5), camera.pixels(0.06, depth))


def draw_rider(canvas: Canvas, lateral: float, depth: float, heading: int, color: Color, seat: float) -> None:
    """Rider seated on a two-wheeler (drawn after it): leg to the pedal, torso, arm, head."""
    camera = canvas.camera

    def at(offset: float, up: float) -> Point:
        return camera.point(lateral + heading * offset, up, depth)

    leg = [at(-0.1, seat), at(0.18, seat - 0.28), at(0.02, 0.36)]
    canvas.line(leg, TrainId.RIDER, shade(color, 0.6), camera.pixels(0.14, depth))
    canvas.polygon([at(-0.22, seat), at(0.02, seat), at(0.2, seat + 0.55), at(-0.05, seat + 0.6)], TrainId.RIDER, color)
    canvas.line([at(0.1, seat + 0.5), at(0.42, seat + 0.12)], TrainId.RIDER, color, camera.pixels(0.09, depth))
    radius = camera.pixels(0.12, depth)
    canvas.ellipse(at(0.12, seat + 0.74), (radius, radius * 1.15), TrainId.RIDER, canvas.style.skin_color)
