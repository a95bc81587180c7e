"""One SynthCity image from (seed, stream, index): the pure rendering entry points.

Every image is a pure function of (seed, stream, index), so datasets are reproducible, can be
generated in parallel, and any single image can be re-rendered without the folder (tests, the gap
study, the HTTP bench).
"""

from __future__ import annotations

import numpy as np

from clda_deploy.data.synthcity.effects import apply_style
from clda_deploy.data.synthcity.scene import render_layout, scheduled_classes
from clda_deploy.data.synthcity.style import DomainStyle, resolve_style
from clda_deploy.errors import CldaError

DOMAINS = ("source", "target")
GAP_RANGE = (0.0, 1.5)
# Seed streams: target-train and target-val never share a scene with each other or with the source.
STREAMS = {"source": 0, "target": 1, "val": 2}


class GeneratorArgumentError(CldaError, ValueError):
    """A generator argument (image counts, size, seed, gap) out of range; the message names it and its range."""


def check_integer(name: str, value: int, minimum: int) -> None:
    """Raise GeneratorArgumentError naming ``name`` unless ``value`` is an integer >= ``minimum`` (bools are not)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise GeneratorArgumentError(f"{name} must be {kind} integer, got {value!r}")


def check_positive(name: str, value: int) -> None:
    """Raise GeneratorArgumentError naming ``name`` unless ``value`` is a positive integer."""
    check_integer(name, value, minimum=1)


def check_gap(gap: float) -> None:
    """Raise GeneratorArgumentError unless ``gap`` is a number in ``GAP_RANGE``."""
    if not isinstance(gap, (int, float, np.floating)) or not GAP_RANGE[0] <= float(gap) <= GAP_RANGE[1]:
        raise GeneratorArgumentError(f"gap must be a number in [{GAP_RANGE[0]}, {GAP_RANGE[1]}], got {gap!r}")


def render(
    seed: int, stream: int, index: int, style: DomainStyle, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unchecked rendering (arguments already validated): (rgb uint8 [H,W,3], trainIds uint8 [H,W])."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), stream, int(index)]))
    rgb, labels, shadow, camera = render_layout(rng, style, height, width, scheduled_classes(index))
    return apply_style(rgb, labels, shadow, style, rng, camera.horizon_y), labels


def render_styled(
    seed: int, index: int, split: str, style: DomainStyle, height: int = 256, width: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of ``split``'s random stream ("source", "target" or "val") rendered with any
    ``style``: (rgb uint8 [H,W,3], trainIds uint8 [H,W]). With the split's own style it is the
    benchmark's image; with another it shows what a change of style alone does (``python -m
    training gap``)."""
    if split not in STREAMS:
        raise ValueError(f"split must be one of {tuple(STREAMS)}, got {split!r}")
    check_positive("height", height)
    check_positive("width", width)
    check_integer("seed", seed, minimum=0)
    check_integer("index", index, minimum=0)
    return render(seed, STREAMS[split], index, style, height, width)


def render_scene(
    seed: int, index: int, domain: str, height: int = 256, width: int = 512, gap: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One SynthCity image: (rgb uint8 [H,W,3], trainIds uint8 [H,W] in 0..18).

    ``domain`` is "source" (game style) or "target" (street style, moved by ``gap``: 0 renders it
    with the source style, 1 with the default target style, up to 1.5 exaggerates the gap). The
    target domain here is the target-train stream; ``generate_synthcity`` also renders a disjoint
    validation stream.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    check_gap(gap)
    return render_styled(seed, index, domain, resolve_style(domain, gap), height, width)
