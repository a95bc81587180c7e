"""``python -m export``: ONNX (fp32, fp16, INT8), TensorRT, Triton and the parity gate for one model file.

Steps: 1 validate inputs (checkpoint, name, output folder, TensorRT, calibration and parity
datasets) before any work; 2 ONNX; 3 fp16 ONNX; 4 INT8 Q/DQ ONNX (CPU and TensorRT forms); 5
TensorRT engine; 6 Triton repository; 7 parity gate over every runnable variant -> parity.json.
Exit codes: 0 success; 2 bad input or unusable tool (one ``error: ...`` line on stderr, no partial
file); 3 the parity gate failed (the table says which backend; see export/parity.py for why the
exported files stay).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

EXIT_ERROR, EXIT_PARITY = 2, 3
log = logging.getLogger("export")


def build_parser() -> argparse.ArgumentParser:
    from export.parity import MAX_CLASS_DROP, MAX_DELTA_MIOU
    from export.quantize import AUTO, CALIBRATION_METHODS, DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_IMAGES, FORMS
    from export.to_tensorrt import add_tensorrt_arguments

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model.safetensors written by clda-deploy")
    parser.add_argument("--out", required=True, help="output folder for <name>.onnx, ... and parity.json")
    parser.add_argument("--name", default=None, help="file stem (default: the checkpoint's role, e.g. student)")
    parser.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (fp16 weights, fp32 I/O)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also write the Q/DQ INT8 files <name>.int8.onnx (CPU form) and <name>.int8-trt.onnx (TensorRT form)",
    )
    parser.add_argument(
        "--int8-forms",
        default=",".join(FORMS),
        metavar="FORMS",
        help=f"comma-separated INT8 forms to write, among {', '.join(FORMS)} (default %(default)s)",
    )
    parser.add_argument(
        "--calibration",
        default=AUTO,
        choices=(AUTO, *CALIBRATION_METHODS),
        help="INT8 activation range calibration; auto (default): each form's best by python -m "
        f"export.calibration_study ({', '.join(f'{k} {v}' for k, v in DEFAULT_CALIBRATION.items())})",
    )
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=DEFAULT_CALIBRATION_IMAGES,
        metavar="N",
        help="target-train images to calibrate INT8 on (default %(default)s; never the val images the gate scores)",
    )
    gate = {
        "--int8-tolerance": (MAX_DELTA_MIOU["int8"], "max |ΔmIoU| of INT8 variants against PyTorch fp32"),
        "--int8-max-class-drop": (MAX_CLASS_DROP["int8"], "max IoU points any one class may lose in INT8"),
    }
    for flag, (default, what) in gate.items():
        parser.add_argument(
            flag, type=float, default=default, metavar="POINTS", help=f"parity gate: {what} (default %(default)s)"
        )
    parser.add_argument(
        "--tensorrt",
        action="store_true",
        help="also build TensorRT engines: <name>.plan, or .fp16.plan with --fp16 and .int8.plan with --int8 "
        "(needs TensorRT >= 10 and CUDA)",
    )
    parser.add_argument("--triton", default=None, metavar="DIR", help="also write a Triton model repository")
    parser.add_argument("--triton-max-batch", type=int, default=4, help="Triton max_batch_size (default 4)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity gate against PyTorch")
    parser.add_argument("-c", "--config", default=None, help="YAML over the checkpoint's config (parity data)")
    parser.add_argument("--dataset-root", default=None, help="shortcut for --set data.val.root=DIR")
    parser.add_argument("--max-images", type=int, default=None, help="parity on the first N val images only")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for the parity runs (default auto)")
    parser.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"])
    add_tensorrt_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument(
        "--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    return parser


def setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("export: %(message)s"))
    for name in ("export", "clda_deploy"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
        logger.propagate = False


def validate(args: argparse.Namespace) -> dict[str, Any]:
    """Step 1: everything that can be wrong with the inputs, before any file is written."""
    from clda_deploy.artifacts import ArtifactError, check_model_name
    from clda_deploy.checkpoint import read_config, read_role
    from clda_deploy.runtime import available_backends
    from export import ExportError
    from export.to_tensorrt import require_tensorrt, tensorrt_options

    checkpoint = Path(args.checkpoint)
    config = read_config(checkpoint)  # missing, corrupt or config-less files fail here
    try:
        name = check_model_name(args.name or read_role(checkpoint))
    except ArtifactError as exc:
        raise ExportError(f"--name: {exc}") from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the output folder {out}: {exc.strerror or exc}") from None
    plan: dict[str, Any] = {"checkpoint": checkpoint, "name": name, "out": out, "num_classes": config.model.num_classes}
    if args.tensorrt:
        require_tensorrt()
        options = tensorrt_options(args)
        profile = options.profile
        if args.triton and not profile.min[0] <= 1 <= args.triton_max_batch <= profile.max[0]:
            raise ExportError(
                f"--triton-max-batch {args.triton_max_batch} must lie in the TensorRT profile's batch range "
                f"1..{profile.max[0]} (and --min-shape batch must be 1)"
            )
        if args.int8 and "tensorrt" not in args.int8_forms.split(","):
            raise ExportError(
                "--tensorrt --int8 needs the tensorrt INT8 form (.int8.plan is built from it): add it to --int8-forms"
            )
        plan["tensorrt"] = options
    overrides = list(args.overrides) + ([f"data.val.root={args.dataset_root}"] if args.dataset_root else [])
    if args.int8:
        from clda_deploy.evaluation import eval_config_for
        from export.quantize import check_calibration, require_tools

        forms = [form.strip() for form in args.int8_forms.split(",") if form.strip()]
        check_calibration(args.calibration, forms, args.calibration_images)
        require_tools(forms)
        plan["int8_forms"] = forms
        plan["openvino_ir"] = available_backends()["openvino"] is None
        plan["calibration_cfg"] = eval_config_for(checkpoint, args.config, overrides, None)
    if not args.no_check:
        from export.parity import Tolerances, parity_dataset

        plan["tolerances"] = Tolerances.with_int8(args.int8_tolerance, args.int8_max_class_drop)
        plan["dataset"], plan["cfg"] = parity_dataset(checkpoint, args.config, overrides, args.max_images)
    return plan


def export_files(args: argparse.Namespace, plan: dict[str, Any]) -> dict[str, Path]:
    """Steps 2-6: write the files; returns them by their own kind's variant (``onnxruntime-fp16``)."""
    from clda_deploy.artifacts import ArtifactKind, kind_for, kind_of_variant, model_file_name
    from export.to_onnx import export_onnx

    out, name, checkpoint = plan["out"], plan["name"], plan["checkpoint"]
    files: dict[str, Path] = {}

    def written(kind: ArtifactKind, path: Path) -> Path:
        files[kind.variant] = path
        log.info("wrote %s", path)
        return path

    onnx_kind = kind_for("onnxruntime")
    onnx_path = written(onnx_kind, export_onnx(checkpoint, out / model_file_name(name, onnx_kind), name,
                                               exporter=args.exporter))  # fmt: skip
    half_path = None
    if args.fp16:
        from export.fp16 import convert_fp16

        half_kind = kind_for("onnxruntime", "fp16")
        half_path = written(half_kind, convert_fp16(onnx_path, out / model_file_name(name, half_kind)))
    if args.int8:
        for kind, path in export_int8(args, plan, onnx_path):
            written(kind, path)
    engine_path = None
    if args.tensorrt:
        from export.to_onnx import onnx_metadata
        from export.to_tensorrt import build_engine

        # Strongly typed builds: each engine's precision comes from the ONNX it is built from.
        sources = {"fp16": half_path, "int8": files.get(kind_of_variant("onnxruntime-int8-trt").variant)}
        for precision in [p for p in ("fp16", "int8") if sources[p] is not None] or ["fp32"]:
            engine_kind = kind_for("tensorrt", precision)
            source = sources.get(precision) or onnx_path
            metadata = onnx_metadata(checkpoint, name, precision)
            engine_file = out / model_file_name(name, engine_kind)
            engine = written(engine_kind, build_engine(source, engine_file, precision, metadata, plan["tensorrt"]))
            engine_path = engine_path or engine  # Triton serves the first: fp16 when there is one
    if args.triton:
        from export.triton import write_triton_model

        model_file = engine_path or half_path or onnx_path
        write_triton_model(args.triton, name, model_file, plan["num_classes"], args.triton_max_batch)
    return files


def export_int8(args: argparse.Namespace, plan: dict[str, Any], onnx_path: Path) -> list[tuple[Any, Path]]:
    """Step 4: the Q/DQ INT8 files (and the CPU form's OpenVINO IR), calibrated on target-train
    images (export/quantize.py)."""
    from clda_deploy.artifacts import kind_of_variant, model_file_name
    from export.quantize import (
        Calibration,
        calibration_images,
        method_for,
        quantize_onnx,
        quantize_openvino,
        tool_version,
    )

    images, source = calibration_images(plan["calibration_cfg"], args.calibration_images)
    kinds = {"cpu": kind_of_variant("onnxruntime-int8"), "tensorrt": kind_of_variant("onnxruntime-int8-trt")}
    written = []
    for form in plan["int8_forms"]:
        method = method_for(form, args.calibration)
        calibration = Calibration(method, len(images), source, form, tool_version(form))
        path = plan["out"] / model_file_name(plan["name"], kinds[form])
        written.append((kinds[form], quantize_onnx(onnx_path, path, images, calibration)))
        plan.setdefault("calibrations", {})[path.name] = calibration
        if form == "cpu" and plan.get("openvino_ir", True):
            ir_kind = kind_of_variant("openvino-int8")
            ir = quantize_openvino(onnx_path, plan["out"] / model_file_name(plan["name"], ir_kind), images, calibration)
            written.append((ir_kind, ir))
            plan["calibrations"][ir.name] = calibration
    return written


def parity_candidates(plan: dict[str, Any], files: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """Every way to run every written file (and the checkpoint in torch bf16) whose runtime is
    installed here: ``variant -> (path, precision)``; the ones that cannot run are logged."""
    from clda_deploy.artifacts import kinds_of
    from clda_deploy.runtime import available_backends

    reasons = available_backends()
    candidates: dict[str, tuple[Path, str]] = {}
    for path in [plan["checkpoint"], *files.values()]:
        for kind in kinds_of(path):
            if kind.variant == "torch":
                continue  # the reference itself
            if reasons.get(kind.backend) is not None:
                log.warning("parity: skipping %s of %s (%s)", kind.variant, Path(path).name, reasons[kind.backend])
                continue
            candidates[kind.variant] = (Path(path), kind.precision)
    return candidates


def check_parity(args: argparse.Namespace, plan: dict[str, Any], files: dict[str, Path]) -> int:
    """Step 7: the parity gate; prints the table and returns the exit code."""
    from clda_deploy.artifacts import PARITY_INDEX, parity_record_name
    from export.parity import all_passed, format_parity, run_parity

    candidates = parity_candidates(plan, files)
    calibrations = plan.get("calibrations", {})
    details = {
        variant: {"calibration": calibrations[path.name].__dict__}
        for variant, (path, _) in candidates.items()
        if path.name in calibrations
    }
    payload = run_parity(
        plan["checkpoint"], candidates, plan["dataset"], plan["cfg"], plan["out"], args.device, not args.quiet,
        plan["name"], plan["tolerances"], details,
    )  # fmt: skip
    print(format_parity(payload))
    record = plan["out"] / parity_record_name(plan["name"])
    failed = [name for name, entry in payload["backends"].items() if not entry["passed"]]
    own = set(files)  # each written file under its own kind; the other variants are other runtimes
    advisory = [name for name in failed if name not in own]
    if advisory:
        print(f"not served (failed their gate; the files themselves passed): {', '.join(advisory)}")
    if all_passed(payload, own):
        print(f"parity passed; written to {record} and {PARITY_INDEX}")
        return 0
    broken = [name for name in failed if name in own]
    print(f"parity FAILED for {', '.join(broken)} (thresholds in {record})", file=sys.stderr)
    return EXIT_PARITY


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    from clda_deploy.errors import CldaError

    try:
        plan = validate(args)
        files = export_files(args, plan)
        return 0 if args.no_check else check_parity(args, plan, files)
    except CldaError as exc:  # a problem the user can fix; anything else is a bug and keeps its traceback
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
