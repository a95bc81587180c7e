"""SynthCity domain styles: the gap knob, the camera response and its golden values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from clda_deploy.data.synthcity import render_scene
from clda_deploy.data.synthcity.style import (
    COLOUR_FIELDS,
    COLOUR_GAP,
    CONDITION_GAP,
    SOURCE_STYLE,
    STREET_STYLE,
    TARGET_CAMERA,
    TARGET_STYLE,
    CameraResponse,
    camera_color,
    resolve_style,
    target_style,
)

HEIGHT, WIDTH = 64, 128  # small, but poles and traffic lights still cover pixels


def _mean_road_color(domain: str, gap: float, count: int = 40) -> np.ndarray:
    """Average over images of each image's mean road colour (every image weighs the same)."""
    means = []
    for index in range(count):
        image, labels = render_scene(1, index, domain, HEIGHT, WIDTH, gap=gap)
        means.append(image[labels == 0].astype(np.float64).mean(axis=0))
    return np.mean(means, axis=0)


def test_domains_differ_at_gap_one_and_match_at_gap_zero() -> None:
    source = _mean_road_color("source", 1.0)
    assert np.abs(source - _mean_road_color("target", 1.0)).max() > 30
    assert np.abs(source - _mean_road_color("target", 0.0)).max() < 12  # sampling noise only
    zero_gap = dataclasses.replace(resolve_style("target", 0.0), name=SOURCE_STYLE.name)
    assert zero_gap == SOURCE_STYLE
    halfway = resolve_style("target", 0.5)
    assert SOURCE_STYLE.noise_sigma < halfway.noise_sigma < TARGET_STYLE.noise_sigma
    assert halfway.palette[0][0] != SOURCE_STYLE.palette[0][0]


def test_camera_response_golden_values() -> None:
    identity = CameraResponse(white_balance=(1.0, 1.0, 1.0), saturation=1.0, contrast=1.0, gamma=1.0, gain=1.0)
    assert camera_color((60, 62, 96), identity) == (60, 62, 96)
    grey = CameraResponse(white_balance=(1.0, 1.0, 1.0), saturation=0.0, contrast=1.0, gamma=1.0, gain=1.0)
    assert camera_color((255, 0, 0), grey) == (76, 76, 76)  # Rec. 601 luma of red: 0.299 * 255
    assert camera_color((255, 255, 255), CameraResponse((2.0, 2.0, 2.0), 1.0, 1.0, 1.0, 1.0)) == (255, 255, 255)
    # The default street camera on the source road colour (white balance, saturation 0.45, contrast 0.8,
    # gamma 1.25, worked through by hand): warm, desaturated, darker.
    assert camera_color((60, 62, 96), TARGET_CAMERA) == (60, 57, 57)


def test_street_palette_is_the_source_palette_through_the_camera() -> None:
    for source_materials, street_materials in zip(SOURCE_STYLE.palette, STREET_STYLE.palette, strict=True):
        assert street_materials == tuple(camera_color(color, TARGET_CAMERA) for color in source_materials)
    assert STREET_STYLE.tyre_color == camera_color(SOURCE_STYLE.tyre_color, TARGET_CAMERA)


def test_target_style_takes_colours_and_conditions_at_their_own_gaps() -> None:
    assert TARGET_STYLE == target_style(COLOUR_GAP, CONDITION_GAP)
    assert resolve_style("target", 1.0) is TARGET_STYLE
    # Colours 1.2 times the camera's change, clipped to 0..255 (golden: the source road colour).
    road, street_road = SOURCE_STYLE.palette[0][0], STREET_STYLE.palette[0][0]
    assert (road, street_road) == ((60, 62, 96), (60, 57, 57))
    assert TARGET_STYLE.palette[0][0] == (60, 56, 49)  # 62 - 5 * 1.2 = 56, 96 - 39 * 1.2 = 49.2
    assert target_style(1.0, 1.0) == dataclasses.replace(STREET_STYLE, name="target")
    # Conditions half way: noise 0 -> 5 gives 2.5, texture 0.04 -> 0.32 gives 0.18.
    assert TARGET_STYLE.noise_sigma == pytest.approx(2.5)
    assert TARGET_STYLE.texture_strength == pytest.approx(0.18)
    only_colour = target_style(1.0, 0.0)
    for field in dataclasses.fields(TARGET_STYLE):
        expected = STREET_STYLE if field.name in COLOUR_FIELDS else SOURCE_STYLE
        if field.name != "name":
            assert getattr(only_colour, field.name) == getattr(expected, field.name), field.name
