"""SynthCity: the procedural two-domain street-scene benchmark embedded as the default (DESIGN.md §5).

``generate_synthcity`` writes the benchmark folder; ``render_scene`` and ``render_styled`` re-render
any single image from (seed, split, index), which the folder is a pure function of. The modules:
``writer`` (folder, layout, synthcity.json), ``render`` (one image), ``scene`` (layout and rare-class
schedule), ``street`` and ``furniture`` (the street and what stands on it), ``objects`` (camera,
canvas, vehicles and people), ``style`` (the domains' knobs), ``effects`` (lighting and sensor).
"""

from __future__ import annotations

from clda_deploy.data.synthcity.render import render_scene, render_styled
from clda_deploy.data.synthcity.writer import GENERATOR_VERSION, OutputExistsError, generate_synthcity

__all__ = ["GENERATOR_VERSION", "OutputExistsError", "generate_synthcity", "render_scene", "render_styled"]
