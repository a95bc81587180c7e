"""``python -m export.calibration_study``: which INT8 calibration method ``--calibration`` defaults to.

Every method each INT8 form offers (export/quantize.py) quantizes the model from the same
calibration images ``python -m export --int8`` would use, and each resulting file runs in the
runtimes that serve it. The score is pixel agreement with the fp32 ONNX model on *held-out*
target-train images: neither the calibration images nor the target-val images the parity gate
scores, so choosing the default does not tune on the gate's data. Agreement needs no labels, so
the study is as valid on a real unlabelled target domain. Writes a JSON record and, with
``--results-doc``, a table section of that markdown file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from clda_deploy.artifacts import RunLayout

DEFAULT_CHECKPOINT = RunLayout().model("student")
DEFAULT_OUT = Path("docs/results/int8_calibration.json")
RUNTIMES = {"cpu": (("onnxruntime-int8", ".int8.onnx"), ("openvino-int8", ".int8.xml")),
            "tensorrt": (("onnxruntime-int8-trt", ".int8-trt.onnx"),)}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export.calibration_study", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="model.safetensors (default %(default)s)")
    parser.add_argument("--images", type=int, default=32, help="calibration images (default %(default)s)")
    parser.add_argument("--holdout", type=int, default=40, help="held-out target-train images scored (default 40)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per runtime")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON record (default %(default)s)")
    parser.add_argument("--results-doc", default=None, metavar="MD", help="also write the table into this file")
    return parser


def holdout_indices(total: int, calibration: list[int], count: int) -> list[int]:
    """``count`` indexes spread over the images not used for calibration."""
    rest = [index for index in range(total) if index not in set(calibration)]
    if not rest:
        return []
    return [rest[int(i)] for i in dict.fromkeys(np.linspace(0, len(rest) - 1, min(count, len(rest))).round())]


def agreement(predictor: Any, images: list[np.ndarray], reference: list[np.ndarray]) -> float:
    """Percent of pixels whose label equals the fp32 model's."""
    same = total = 0
    for image, labels in zip(images, reference, strict=True):
        predicted = predictor.predict(image, want_logits=False).labels
        same += int(np.sum(predicted == labels))
        total += labels.size
    return 100.0 * same / max(total, 1)


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    from clda_deploy.data import build_dataset
    from clda_deploy.evaluation import eval_config_for
    from clda_deploy.runtime import load_predictor
    from export.quantize import (
        FORM_METHODS,
        FORMS,
        Calibration,
        calibration_indices,
        quantize_onnx,
        quantize_openvino,
        tool_version,
    )
    from export.to_onnx import export_onnx

    cfg = eval_config_for(args.checkpoint, None, [], None)
    dataset = build_dataset(cfg.data.target, train=False, labels=False)
    calibration = calibration_indices(len(dataset), args.images)
    holdout = holdout_indices(len(dataset), calibration, args.holdout)
    load = lambda indexes: [dataset[i]["image"].numpy()[None].astype(np.float32) for i in indexes]  # noqa: E731
    calibration_images, holdout_images = load(calibration), load(holdout)
    source = f"{cfg.data.target.format}:{cfg.data.target.root}:{cfg.data.target.split}"
    rows = []
    with tempfile.TemporaryDirectory(prefix="clda-calibration-") as work:
        fp32 = export_onnx(args.checkpoint, Path(work) / "model.onnx", "model")
        reference = load_predictor(fp32, device="cpu", threads=args.threads)
        labels = [reference.predict(image, want_logits=False).labels for image in holdout_images]
        for form in FORMS:
            for method in FORM_METHODS[form]:
                record = Calibration(method, len(calibration_images), source, form, tool_version(form))
                started = time.perf_counter()
                stem = Path(work) / f"model-{form}-{method}"
                onnx_suffix = RUNTIMES[form][0][1]
                paths = {onnx_suffix: quantize_onnx(fp32, Path(f"{stem}{onnx_suffix}"), calibration_images, record)}
                if form == "cpu":
                    paths[".int8.xml"] = quantize_openvino(fp32, Path(f"{stem}.int8.xml"), calibration_images, record)
                seconds = time.perf_counter() - started
                for variant, suffix in RUNTIMES[form]:
                    predictor = load_predictor(paths[suffix], variant, device="cpu", threads=args.threads)
                    score = agreement(predictor, holdout_images, labels)
                    rows.append({"form": form, "method": method, "variant": variant, "agreement": score,
                                 "quantize_s": seconds})  # fmt: skip
                    print(f"{form:<8} {method:<11} {variant:<22} {score:7.3f} % agree  ({seconds:.0f} s)", flush=True)
    best = {}
    for form in FORMS:
        means = {m: np.mean([r["agreement"] for r in rows if (r["form"], r["method"]) == (form, m)])
                 for m in FORM_METHODS[form]}  # fmt: skip
        best[form] = max(means, key=lambda m: means[m])
    return {
        "checkpoint": str(args.checkpoint),
        "calibration": {"dataset": source, "indexes": calibration},
        "holdout": {"dataset": source, "indexes": holdout, "metric": "pixel agreement with fp32 ONNX Runtime, %"},
        "rows": rows,
        "best": best,
    }


def markdown(record: dict[str, Any], command: str) -> str:
    from clda_deploy.reporting import markdown_table

    body = [[r["form"], r["method"], r["variant"], r["agreement"], r["quantize_s"]] for r in record["rows"]]
    best = ", ".join(f"{form}: {method}" for form, method in record["best"].items())
    return "\n".join([
        "## INT8 calibration",
        "",
        f"`{command}`  ",
        f"{len(record['calibration']['indexes'])} calibration and {len(record['holdout']['indexes'])} held-out "
        f"target-train images ({record['holdout']['dataset']}); never the target-val images the gate scores.",
        "",
        markdown_table(["form", "method", "runs in", "agreement with fp32 %", "quantize s"], body, digits=3),
        "",
        f"Best mean agreement per form: {best}.",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from clda_deploy.errors import CldaError
    from clda_deploy.reporting import write_json, write_table_section

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        record = run_study(args)
    except CldaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = " ".join(["python -m export.calibration_study", *argv])
    record["command"] = command
    write_json(Path(args.out), record)
    table = markdown(record, command)
    print(table)
    if args.results_doc:
        write_table_section(args.results_doc, "int8_calibration", table, "INT8 calibration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
