"""``python -m training analyze {saliency,cka,pvr,similarity}``: the paper's analyses (Fig. 2-5).

Each reads model files (``model.safetensors``, config inside), measures on the first ``--images``
target-val images of the first model's config (``-c``/``--set`` override it), and writes a PNG and
the JSON of its numbers into ``--out``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from clda_deploy.config import Config, config_to_dict, load_config

KINDS = ("saliency", "cka", "pvr", "similarity")


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


def saliency(models: dict[str, Any], batches: list[Any], out: Path, threshold: float) -> dict[str, Any]:
    """Fig. 2: LSR (Eq. 2) of every block of both models on target-val labels."""
    from clda_deploy.uda.analysis import lsr_summary, plot_lsr_distribution
    from clda_deploy.uda.mapping import layer_saliency

    results = {role: layer_saliency(model, batches, "labels", threshold=threshold) for role, model in models.items()}
    payload = {role: {"summary": lsr_summary(rows), "blocks": rows} for role, rows in results.items()}
    write_json(out / "saliency.json", payload)
    plot_lsr_distribution(results["teacher"], results["student"], out / "saliency.png", threshold)
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
    from clda_deploy.uda.mapping import SimilarityAccumulator

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


def run_analysis(kind: str, first: str, second: str, config_path: str | None, overrides: list[str],
                 out: str, images: int) -> dict[str, Any]:  # fmt: skip
    """Load both models (``first`` = teacher or distilled student, ``second`` = student or independent
    student), the first model's data config, then run ``kind``."""
    import torch

    from clda_deploy.checkpoint import load_segmenter, read_config

    if kind not in KINDS:
        raise ValueError(f"analysis must be one of {list(KINDS)}, got {kind!r}")
    cfg = load_config(config_path, overrides, base=config_to_dict(read_config(first)))
    models = {"teacher": load_segmenter(first), "student": load_segmenter(second)}
    out_dir = Path(out)
    with torch.no_grad():
        if kind == "pvr":
            result = pvr(models, out_dir)
        else:
            batches = val_batches(cfg, images)
            if kind == "saliency":
                result = saliency(models, batches, out_dir, cfg.clda.nonsalient_threshold)
            elif kind == "cka":
                result = cka(models, batches, out_dir)
            else:
                result = similarity(models, batches, out_dir)
    print(f"{kind}: {out_dir / (kind + '.json')} and {out_dir / (kind + '.png')}")
    return result
