"""``python -m training.studies.hrda_branches``: what each scale of an HRDA model contributes.

For every ``--checkpoint`` (HRDA model files), target-val mIoU of the fused prediction (the learnt scale
attention), of the detail alone (attention fixed to 1) and of the context alone (attention 0), all with
the model's own evaluation settings. The detail is the full-scale pass over the whole image, the context
the pass at ``hrda.context_scale``: if the fused model is not better than its better branch, the
attention has not learnt to combine them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from clda_deploy.reporting import write_json

BRANCHES = {"fused": None, "detail_only": 1.0, "context_only": 0.0}


def score_branches(checkpoint: str | Path, max_images: int | None = None, progress: bool = False) -> dict[str, float]:
    """``{"fused", "detail_only", "context_only": target-val mIoU}`` of one HRDA model file."""
    import contextlib

    from clda_deploy.checkpoint import load_segmenter
    from clda_deploy.evaluation import eval_config_for, evaluate, val_dataset
    from clda_deploy.metrics import mean_iou
    from clda_deploy.models.hrda import HRDASegmenter

    cfg = eval_config_for(checkpoint, None, [], max_images)
    model = load_segmenter(checkpoint)
    if not isinstance(model, HRDASegmenter):
        raise ValueError(f"{checkpoint} is not an HRDA model (uda.method={cfg.uda.method})")
    val = val_dataset(cfg)
    scores = {}
    for name, value in BRANCHES.items():
        with contextlib.nullcontext() if value is None else model.fixed_attention(value):
            result = evaluate(model, val, cfg.model.num_classes, cfg.eval, progress=progress)
        scores[name] = mean_iou(result.matrix)
    return scores


def markdown(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| model | fused | detail alone (a = 1) | context alone (a = 0) |", "|---|---|---|---|"]
    for name, scores in rows.items():
        lines.append(
            f"| `{name}` | {scores['fused']:.2f} | {scores['detail_only']:.2f} | {scores['context_only']:.2f} |"
        )
    if len(rows) > 1:
        means = {key: statistics.fmean(scores[key] for scores in rows.values()) for key in BRANCHES}
        lines.append(f"| mean | {' | '.join(f'{means[key]:.2f}' for key in BRANCHES)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.studies.hrda_branches", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--checkpoint", action="append", required=True, help="an HRDA model.safetensors (repeatable)")
    parser.add_argument("--max-images", type=int, default=None, help="score the first N val images only")
    parser.add_argument("--json", default=None, help="write the scores here")
    args = parser.parse_args(argv)
    try:
        rows: dict[str, Any] = {path: score_branches(path, args.max_images) for path in args.checkpoint}
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(rows))
    if args.json:
        write_json(Path(args.json), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
