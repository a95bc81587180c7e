"""``python -m training analyze {saliency,cka,pvr,similarity,update-probe}``: the paper's analyses
(Fig. 2-5) and the training-free check of CLDA's S->T update (Eq. 8, ``clda_deploy.uda.update_probe``).

Each reads model files (``model.safetensors``, config inside), measures on the first ``--images``
target-val images of the first model's config (``-c``/``--set`` override it), and writes a PNG and
the JSON of its numbers into ``--out`` (``<kind>.json``; ``update_probe.json`` for update-probe).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clda_deploy.artifacts import SALIENCY_FILE
from clda_deploy.config import Config, config_to_dict, load_config
from training.errors import UsageError

KINDS = ("saliency", "cka", "pvr", "similarity", "update-probe")
DEFAULT_PROBE_WEIGHTS = (0.3, 1.0)


def val_batches(cfg: Config, count: int) -> list[dict[str, Any]]:
    """The first ``count`` target-val images (with native-size labels), in batches of 4."""
    from clda_deploy.data import build_dataset
    from clda_deploy.evaluation import collate_eval

    dataset = build_dataset(cfg.data.val, train=False)
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    return [collate_eval(samples[i : i + 4]) for i in range(0, len(samples), 4)]


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def saliency_data(cfg: Config, images: int) -> list[dict[str, Any]]:
    """The target images the student stage measures LSR on (``clda.saliency_data``), ``images`` of them."""
    import dataclasses

    from clda_deploy.data import build_dataset
    from training.student import saliency_batches

    cfg = dataclasses.replace(cfg, clda=dataclasses.replace(cfg.clda, saliency_images=images))
    return saliency_batches(cfg, {"val": build_dataset(cfg.data.val, train=False)})


def saliency(cfg: Config, models: dict[str, Any], batches: list[Any], out: Path) -> dict[str, Any]:
    """Fig. 2: LSR (Eq. 2) of every block of both models on the target images ``clda.saliency_data`` names
    (labels, or label-free agreement), with the signed delta on the target and on
    ``clda.saliency_source_images`` source images (``saliency_domains.png``)."""
    from clda_deploy.uda.analysis import lsr_summary, plot_lsr_distribution, plot_saliency_by_domain
    from clda_deploy.uda.saliency import reference_for, teacher_saliency
    from training.student import source_saliency_batches

    source = source_saliency_batches(cfg)
    threshold, rule = cfg.clda.nonsalient_threshold, cfg.clda.saliency_rule
    reference = reference_for(cfg.clda.saliency_data)
    results = {role: teacher_saliency(model, batches, source, reference, threshold, rule)
               for role, model in models.items()}  # fmt: skip
    payload = {role: {"summary": lsr_summary(rows), "blocks": rows} for role, rows in results.items()}
    payload["measured_on"] = {"data": cfg.clda.saliency_data, "images": len([i for b in batches for i in b["image"]]),
                              "rule": rule, "threshold": threshold}  # fmt: skip
    write_json(out / SALIENCY_FILE, payload)
    plot_lsr_distribution(results["teacher"], results["student"], out / "saliency.png", threshold)
    plot_saliency_by_domain(results, out / "saliency_domains.png", threshold)
    return payload


def cka(models: dict[str, Any], batches: list[Any], out: Path) -> dict[str, Any]:
    """Fig. 3: debiased linear CKA of every (teacher block, student block) pair (debiased because a
    few images with many features bias plain CKA towards 1)."""
    from clda_deploy.uda.analysis import block_outputs, cka_correspondence, cka_matrix, plot_cka_heatmap

    features = {role: block_outputs(model, batches) for role, model in models.items()}
    matrix, teacher_names, student_names = cka_matrix(features["teacher"], features["student"], debiased=True)
    payload = {"teacher_blocks": teacher_names, "student_blocks": student_names, "cka": matrix.tolist(),
               "best_teacher_block": cka_correspondence(matrix, teacher_names, student_names)}  # fmt: skip
    write_json(out / "cka.json", payload)
    plot_cka_heatmap(matrix, teacher_names, student_names, out / "cka.png")
    return payload


def pvr(models: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fig. 4 (Eq. 3): per-module weight variation between a distilled and an independent student."""
    from clda_deploy.uda.analysis import plot_pvr_heatmap
    from clda_deploy.uda.analysis import pvr as compute_pvr

    values = compute_pvr(models["teacher"], models["student"])
    write_json(out / "pvr.json", values)
    plot_pvr_heatmap(values, out / "pvr.png")
    return values


def similarity(models: dict[str, Any], batches: list[Any], out: Path) -> dict[str, Any]:
    """Fig. 5: channel- vs token-wise cosine similarity of every teacher block's attention output to
    every same-stage student block's, on the same target images."""
    from clda_deploy.uda.analysis import plot_similarity_heatmaps
    from clda_deploy.uda.similarity import SimilarityAccumulator

    teacher, student = models["teacher"], models["student"]
    accumulators = {mode: SimilarityAccumulator(teacher.block_names(), student.block_names(), mode)
                    for mode in ("channel", "token")}  # fmt: skip
    for batch in batches:
        with teacher.capture_attention(teacher.block_names(), detach=True) as attention_t:
            teacher(batch["image"])
        with student.capture_attention(student.block_names(), detach=True) as attention_s:
            student(batch["image"])
        for accumulator in accumulators.values():
            accumulator.update(attention_t, attention_s)
    payload = {mode: acc.mean_scores() for mode, acc in accumulators.items()}
    write_json(out / "similarity.json", payload)
    plot_similarity_heatmaps(payload["channel"], payload["token"], out / "similarity.png")
    return payload


def update_probe(cfg: Config, models: dict[str, Any], batches: list[Any], out: Path, weights: Sequence[float],
                 images: int) -> dict[str, Any]:  # fmt: skip
    """Can Eq. 8 help this pair? The teacher's target-val mIoU after blending each non-salient block toward
    every same-stage student block with each weight, against the shrink and other-teacher-block controls.
    The non-salient blocks are chosen as the student stage chooses them (``clda.saliency_data`` and
    ``clda.saliency_rule``), on other images than the target-val ``batches`` they are scored on."""
    from clda_deploy.uda.saliency import reference_for, teacher_saliency
    from clda_deploy.uda.update_probe import plot_probe, probe

    reference = reference_for(cfg.clda.saliency_data)
    rows = teacher_saliency(models["teacher"], saliency_data(cfg, images), None, reference,
                            cfg.clda.nonsalient_threshold, cfg.clda.saliency_rule)  # fmt: skip
    blocks = [row["block"] for row in rows if not row["salient"]]
    result = probe(models["teacher"], models["student"], batches, weights=tuple(weights), blocks=blocks,
                   threshold=cfg.clda.nonsalient_threshold)  # fmt: skip
    result["selection"] = {"data": cfg.clda.saliency_data, "rule": cfg.clda.saliency_rule, "saliency": rows}
    write_json(out / "update_probe.json", result)
    plot_probe(result, out / "update_probe.png")
    print(f"update-probe: {result['summary']['verdict']}")
    return result


def run_analysis(kind: str, first: str, second: str, config_path: str | None, overrides: list[str], out: str,
                 images: int, weights: Sequence[float] = DEFAULT_PROBE_WEIGHTS) -> dict[str, Any]:  # fmt: skip
    """Load both models (``first`` = teacher or distilled student, ``second`` = student or independent
    student), the first model's data config, then run ``kind`` (``weights``: update-probe's blend weights)."""
    import torch

    from clda_deploy.checkpoint import load_segmenter, read_config

    if kind not in KINDS:
        raise UsageError(f"analysis must be one of {list(KINDS)}, got {kind!r}")
    outside = [w for w in weights if not 0.0 <= w <= 1.0]
    if kind == "update-probe" and outside:
        raise UsageError(f"--weights: each blend weight w must lie in [0, 1] (w = 1 - alpha of Eq. 8), got {outside}")
    cfg = load_config(config_path, overrides, base=config_to_dict(read_config(first)))
    models = {"teacher": load_segmenter(first), "student": load_segmenter(second)}
    out_dir = Path(out)
    with torch.no_grad():
        if kind == "pvr":
            result = pvr(models, out_dir)
        elif kind == "saliency":
            result = saliency(cfg, models, saliency_data(cfg, images), out_dir)
        else:
            batches = val_batches(cfg, images)
            if kind == "cka":
                result = cka(models, batches, out_dir)
            elif kind == "update-probe":
                result = update_probe(cfg, models, batches, out_dir, weights, images)
            else:
                result = similarity(models, batches, out_dir)
    stem = kind.replace("-", "_")
    print(f"{kind}: {out_dir / (stem + '.json')} and {out_dir / (stem + '.png')}")
    return result
