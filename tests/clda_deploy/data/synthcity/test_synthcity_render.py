"""SynthCity rendering: determinism, class coverage of the rare-class schedule, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from clda_deploy.data.labels import NUM_CLASSES
from clda_deploy.data.synthcity import render_scene

HEIGHT, WIDTH = 64, 128  # small, but poles and traffic lights still cover pixels


@pytest.mark.parametrize("domain", ["source", "target"])
def test_render_scene_is_deterministic_and_well_formed(domain: str) -> None:
    image, labels = render_scene(3, 5, domain, HEIGHT, WIDTH)
    again_image, again_labels = render_scene(3, 5, domain, HEIGHT, WIDTH)
    other_image, other_labels = render_scene(3, 6, domain, HEIGHT, WIDTH)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    assert labels.shape == (HEIGHT, WIDTH) and labels.dtype == np.uint8
    assert int(labels.max()) < NUM_CLASSES
    np.testing.assert_array_equal(image, again_image)
    np.testing.assert_array_equal(labels, again_labels)
    assert not np.array_equal(image, other_image) and not np.array_equal(labels, other_labels)
    assert not np.array_equal(image, render_scene(4, 5, domain, HEIGHT, WIDTH)[0])  # the seed matters too


def test_every_class_appears_in_any_40_consecutive_source_images() -> None:
    present = np.zeros(NUM_CLASSES, dtype=bool)
    for index in range(17, 57):  # a window that does not start at a multiple of the schedule period
        present[np.unique(render_scene(0, index, "source", HEIGHT, WIDTH)[1])] = True
    assert present.all(), f"missing trainIds {np.flatnonzero(~present).tolist()}"


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"domain": "night"}, "domain"),
        ({"height": 0}, "height"),
        ({"width": -4}, "width"),
        ({"gap": 1.6}, "gap"),
        ({"gap": -0.1}, "gap"),
        ({"index": -1}, "index"),
        ({"seed": -3}, "seed"),
    ],
)
def test_render_scene_rejects_bad_arguments(arguments: dict, name: str) -> None:
    call = {"seed": 0, "index": 0, "domain": "source", "height": HEIGHT, "width": WIDTH, **arguments}
    with pytest.raises(ValueError, match=name):
        render_scene(**call)
