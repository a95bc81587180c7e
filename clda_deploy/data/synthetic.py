"""SynthCity: a procedural two-domain street-scene benchmark (DESIGN.md §5).

No dataset can be downloaded where this project runs, so it generates one: street scenes with the 19
Cityscapes classes, a "game" source domain written in the GTA5 layout and a "street" target domain
written in the Cityscapes layout, with a real, tunable domain gap (``gap``). Every image is a pure
function of (seed, stream, index), so datasets are reproducible and can be generated in parallel.
"""

from __future__ import annotations

from clda_deploy.errors import CldaError
import json
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from clda_deploy.data.labels import CITYSCAPES_CLASSES, NUM_CLASSES, trainid_to_labelid_lut
from clda_deploy.data.synthetic_effects import apply_style
from clda_deploy.data.synthetic_scene import render_layout, scheduled_classes
from clda_deploy.data.synthetic_style import DomainStyle, resolve_style

DOMAINS = ("source", "target")
GAP_RANGE = (0.0, 1.5)
GENERATOR_VERSION = 3  # bump when rendering changes, so that old folders are not mistaken for new ones
# Seed streams: target-train and target-val never share a scene with each other or with the source.
STREAMS = {"source": 0, "target": 1, "val": 2}
TRAIN_CITIES = ("polyburg", "meshfurt", "voxelheim")
VAL_CITIES = ("rasterdam", "texelsee")
PNG_COMPRESSION = 1  # speed over size: the default benchmark is written in well under two minutes
LABEL_ID_LUT = trainid_to_labelid_lut()  # trainId -> GTA5/Cityscapes labelId, the ids both layouts store


class OutputExistsError(CldaError, FileExistsError, ValueError):
    """``out`` already holds something other than the requested benchmark.

    A FileExistsError by nature, and a ValueError so that command lines reporting bad arguments
    (``python -m training data``) show its message instead of a traceback.
    """


class GeneratorArgumentError(CldaError, ValueError):
    """A generator argument (image counts, size, seed, gap) out of range; the message names it and its range."""


def _check_integer(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        kind = "a positive" if minimum == 1 else "a non-negative"
        raise GeneratorArgumentError(f"{name} must be {kind} integer, got {value!r}")


def _check_positive(name: str, value: int) -> None:
    _check_integer(name, value, minimum=1)


def _check_gap(gap: float) -> None:
    if not isinstance(gap, (int, float, np.floating)) or not GAP_RANGE[0] <= float(gap) <= GAP_RANGE[1]:
        raise GeneratorArgumentError(f"gap must be a number in [{GAP_RANGE[0]}, {GAP_RANGE[1]}], got {gap!r}")


def _render(seed: int, stream: int, index: int, style: DomainStyle, height: int, width: int) -> tuple[np.ndarray, ...]:
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
    _check_positive("height", height)
    _check_positive("width", width)
    _check_integer("seed", seed, minimum=0)
    _check_integer("index", index, minimum=0)
    return _render(seed, STREAMS[split], index, style, height, width)


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
    _check_gap(gap)
    return render_styled(seed, index, domain, resolve_style(domain, gap), height, width)


def cityscapes_name(split: str, index: int) -> tuple[str, str]:
    """(city, file stem) of target image ``index``, e.g. ("polyburg", "polyburg_000012_000019")."""
    cities = TRAIN_CITIES if split == "train" else VAL_CITIES
    city = cities[index % len(cities)]
    # Like Cityscapes: one annotated frame (the 20th, number 19) per sequence.
    return city, f"{city}_{index // len(cities):06d}_000019"


def relative_paths(split: str, index: int) -> tuple[str, str]:
    """(image, label) paths of one sample relative to the benchmark folder."""
    if split == "source":
        return f"source/images/{index:05d}.png", f"source/labels/{index:05d}.png"
    folder = "train" if split == "target" else "val"
    city, stem = cityscapes_name(folder, index)
    return (
        f"target/leftImg8bit/{folder}/{city}/{stem}_leftImg8bit.png",
        f"target/gtFine/{folder}/{city}/{stem}_gtFine_labelIds.png",
    )


def _write_sample(task: tuple[str, str, int, int, int, int, float]) -> tuple[str, np.ndarray]:
    """Worker: render one sample, write image and labelId PNGs; returns (split, class pixel counts)."""
    root, split, index, seed, height, width, gap = task
    style = resolve_style("source" if split == "source" else "target", gap)
    image, labels = _render(seed, STREAMS[split], index, style, height, width)
    image_path, label_path = (Path(root) / path for path in relative_paths(split, index))
    Image.fromarray(image).save(image_path, compress_level=PNG_COMPRESSION)
    Image.fromarray(LABEL_ID_LUT[labels]).save(label_path, compress_level=PNG_COMPRESSION)
    return split, np.bincount(labels.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]


def _make_folders(root: Path, counts: dict[str, int]) -> None:
    (root / "source" / "images").mkdir(parents=True)
    (root / "source" / "labels").mkdir(parents=True)
    for split, folder, cities in (("target", "train", TRAIN_CITIES), ("val", "val", VAL_CITIES)):
        for city in cities[: counts[split]]:
            (root / "target" / "leftImg8bit" / folder / city).mkdir(parents=True)
            (root / "target" / "gtFine" / folder / city).mkdir(parents=True)


def _existing(out: Path, parameters: dict[str, Any]) -> dict[str, Any] | None:
    """The stored summary when ``out`` already holds this benchmark; raise when it holds anything else."""
    if not out.exists():
        return None
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()  # an empty folder (e.g. made by a caller) is not user data
        return None
    record = out / "synthcity.json"
    if not record.is_file():
        raise OutputExistsError(
            f"{out} exists and is not a SynthCity folder (no synthcity.json); choose another output folder"
        )
    content = json.loads(record.read_text())
    stored = content.get("parameters", {})
    if stored != parameters:
        diff = {key: (stored.get(key), value) for key, value in parameters.items() if stored.get(key) != value}
        raise OutputExistsError(
            f"{out} holds a SynthCity benchmark with other parameters (stored, requested): {diff}; "
            "delete it or choose another output folder"
        )
    return content["summary"]


def _frequencies(totals: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    return {
        split: {
            name: float(count) / max(float(counts.sum()), 1.0)
            for name, count in zip(CITYSCAPES_CLASSES, counts, strict=True)
        }
        for split, counts in totals.items()
    }


def _run_tasks(tasks: list[tuple], workers: int, progress: bool) -> dict[str, np.ndarray]:
    totals = {split: np.zeros(NUM_CLASSES, dtype=np.int64) for split in STREAMS}
    bar = tqdm(total=len(tasks), desc="SynthCity", unit="img", disable=not progress)
    if workers == 1:
        results = map(_write_sample, tasks)
        for split, counts in results:
            totals[split] += counts
            bar.update()
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for split, counts in pool.imap_unordered(_write_sample, tasks, chunksize=8):
                totals[split] += counts
                bar.update()
    bar.close()
    return totals


def _parameters(counts: dict[str, int], height: int, width: int, seed: int, gap: float) -> dict[str, Any]:
    """Validated generation parameters, as stored in synthcity.json (raises ValueError naming the argument)."""
    for name, value in (*counts.items(), ("height", height), ("width", width)):
        _check_positive(name, value)
    _check_gap(gap)
    _check_integer("seed", seed, minimum=0)
    sizes = {"height": int(height), "width": int(width), "seed": int(seed), "gap": float(gap)}
    return {**{name: int(value) for name, value in counts.items()}, **sizes, "version": GENERATOR_VERSION}


def generate_synthcity(
    out: str | Path,
    num_source: int = 2000,
    num_target: int = 1000,
    num_val: int = 200,
    height: int = 256,
    width: int = 512,
    seed: int = 0,
    workers: int | None = None,
    gap: float = 1.0,
    progress: bool = True,
) -> dict:
    """Write the benchmark to ``out`` and return its summary (also stored in ``out/synthcity.json``).

    Layout: ``source/{images,labels}/NNNNN.png`` (GTA5, labelIds) and ``target/{leftImg8bit,gtFine}/
    {train,val}/<city>/...`` (Cityscapes names, labelIds). The folder appears only when complete: it is
    written to ``<out>.partial-<pid>`` and renamed. An existing folder with the same parameters is
    reused; one with other parameters (or other files) raises ``OutputExistsError`` (a FileExistsError).
    """
    parameters = _parameters(
        {"num_source": num_source, "num_target": num_target, "num_val": num_val}, height, width, seed, gap
    )
    if workers is not None:
        _check_positive("workers", workers)
    out = Path(out)
    stored = _existing(out, parameters)
    if stored is not None:
        message = f"{out} already holds this SynthCity benchmark; nothing to do"
        if progress:
            print(message, file=sys.stderr)
        return {**stored, "out": str(out), "reused": True, "message": message}
    started = time.perf_counter()
    partial_root = out.parent / f"{out.name}.partial-{os.getpid()}"
    if partial_root.exists():
        shutil.rmtree(partial_root)  # our own leftover (same pid): never a complete dataset
    counts = {"source": parameters["num_source"], "target": parameters["num_target"], "val": parameters["num_val"]}
    _make_folders(partial_root, counts)
    tasks = [
        (
            str(partial_root),
            split,
            index,
            parameters["seed"],
            parameters["height"],
            parameters["width"],
            parameters["gap"],
        )
        for split, count in counts.items()
        for index in range(count)
    ]
    try:
        totals = _run_tasks(tasks, min(workers or os.cpu_count() or 1, len(tasks)), progress)
    except BaseException:  # interrupted or failed: leave nothing that could pass for a dataset
        shutil.rmtree(partial_root, ignore_errors=True)
        raise
    summary = {
        "counts": {"source": counts["source"], "target_train": counts["target"], "target_val": counts["val"]},
        "size": [parameters["height"], parameters["width"]],
        "seed": parameters["seed"],
        "gap": parameters["gap"],
        "seconds": round(time.perf_counter() - started, 2),
        "class_frequencies": _frequencies(
            {"source": totals["source"], "target_train": totals["target"], "target_val": totals["val"]}
        ),
    }
    record = {"generator": "synthcity", "parameters": parameters, "summary": summary}
    (partial_root / "synthcity.json").write_text(json.dumps(record, indent=2))
    os.replace(partial_root, out)
    return {**summary, "out": str(out), "reused": False}
