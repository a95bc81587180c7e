"""``python -m export``: ONNX (fp32, fp16), TensorRT, Triton and the parity gate for one model file.

Steps: 1 validate inputs (checkpoint, name, output folder, TensorRT, parity dataset) before any
work; 2 ONNX; 3 fp16 ONNX; 4 TensorRT engine; 5 Triton repository; 6 parity gate -> parity.json.
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
    from export.to_tensorrt import DEFAULT_MAX, DEFAULT_MIN, DEFAULT_OPT, DEFAULT_WORKSPACE_GIB

    def shape(values: tuple[int, ...]) -> str:
        return "x".join(map(str, values))

    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="model.safetensors written by clda-deploy")
    parser.add_argument("--out", required=True, help="output folder for <name>.onnx, ... and parity.json")
    parser.add_argument("--name", default=None, help="file stem (default: the checkpoint's role, e.g. student)")
    parser.add_argument("--fp16", action="store_true", help="also write <name>.fp16.onnx (fp16 weights, fp32 I/O)")
    parser.add_argument("--tensorrt", action="store_true", help="also build <name>.plan (needs TensorRT + CUDA)")
    parser.add_argument(
        "--min-shape", default=shape(DEFAULT_MIN), help="TensorRT profile minimum BxCxHxW (default %(default)s)"
    )
    parser.add_argument(
        "--opt-shape", default=shape(DEFAULT_OPT), help="TensorRT profile optimum BxCxHxW (default %(default)s)"
    )
    parser.add_argument(
        "--max-shape", default=shape(DEFAULT_MAX), help="TensorRT profile maximum BxCxHxW (default %(default)s)"
    )
    parser.add_argument(
        "--workspace-gib",
        type=float,
        default=DEFAULT_WORKSPACE_GIB,
        help="TensorRT workspace limit in GiB (default %(default)s)",
    )
    parser.add_argument("--triton", default=None, metavar="DIR", help="also write a Triton model repository")
    parser.add_argument("--triton-max-batch", type=int, default=4, help="Triton max_batch_size (default 4)")
    parser.add_argument("--no-check", action="store_true", help="skip the parity gate against PyTorch")
    parser.add_argument("-c", "--config", default=None, help="YAML over the checkpoint's config (parity data)")
    parser.add_argument("--dataset-root", default=None, help="shortcut for --set data.val.root=DIR")
    parser.add_argument("--max-images", type=int, default=None, help="parity on the first N val images only")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda for the parity runs (default auto)")
    parser.add_argument("--exporter", default="torchscript", choices=["torchscript", "dynamo"])
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
    from export import ExportError
    from export.to_tensorrt import Profile, parse_shape, require_tensorrt

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
        profile = Profile(parse_shape(args.min_shape), parse_shape(args.opt_shape), parse_shape(args.max_shape))
        if args.triton and not profile.min[0] <= 1 <= args.triton_max_batch <= profile.max[0]:
            raise ExportError(
                f"--triton-max-batch {args.triton_max_batch} must lie in the TensorRT profile's batch range "
                f"1..{profile.max[0]} (and --min-shape batch must be 1)"
            )
        plan["profile"] = profile
    if not args.no_check:
        from export.parity import parity_dataset

        overrides = list(args.overrides) + ([f"data.val.root={args.dataset_root}"] if args.dataset_root else [])
        plan["dataset"], plan["cfg"] = parity_dataset(checkpoint, args.config, overrides, args.max_images)
    return plan


def export_files(args: argparse.Namespace, plan: dict[str, Any]) -> dict[str, tuple[Path, str]]:
    """Steps 2-5: write the files; returns parity candidates ``backend variant -> (path, precision)``."""
    from clda_deploy.artifacts import ArtifactKind, kind_for, model_file_name
    from export.to_onnx import export_onnx

    out, name, checkpoint = plan["out"], plan["name"], plan["checkpoint"]
    files: dict[str, tuple[Path, str]] = {}

    def written(kind: ArtifactKind, path: Path) -> Path:
        files[kind.variant] = (path, kind.precision)
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
    engine_path = None
    if args.tensorrt:
        from export.to_onnx import onnx_metadata
        from export.to_tensorrt import build_engine

        engine_kind = kind_for("tensorrt", "fp16" if args.fp16 else "fp32")
        # TensorRT >= 11 is strongly typed: fp16 must come from the fp16 ONNX (see to_tensorrt).
        source = half_path if half_path is not None and _tensorrt_major() >= 11 else onnx_path
        metadata = onnx_metadata(checkpoint, name, engine_kind.precision)
        engine_file = out / model_file_name(name, engine_kind)
        engine = build_engine(source, engine_file, plan["profile"], engine_kind.precision, metadata, args.workspace_gib)
        engine_path = written(engine_kind, engine)
    if args.triton:
        from export.triton import write_triton_model

        model_file = engine_path or half_path or onnx_path
        write_triton_model(args.triton, name, model_file, plan["num_classes"], args.triton_max_batch)
    return files


def _tensorrt_major() -> int:
    import tensorrt as trt

    return int(trt.__version__.split(".")[0])


def check_parity(args: argparse.Namespace, plan: dict[str, Any], files: dict[str, tuple[Path, str]]) -> int:
    """Step 6: the parity gate; prints the table and returns the exit code."""
    from clda_deploy.artifacts import PARITY_INDEX, parity_record_name
    from export.parity import all_passed, format_parity, run_parity

    payload = run_parity(
        plan["checkpoint"], files, plan["dataset"], plan["cfg"], plan["out"], args.device, not args.quiet, plan["name"]
    )
    print(format_parity(payload))
    if all_passed(payload):
        print(f"parity passed; written to {plan['out'] / parity_record_name(plan['name'])} and {PARITY_INDEX}")
        return 0
    failed = [name for name, entry in payload["backends"].items() if not entry["passed"]]
    record = plan["out"] / parity_record_name(plan["name"])
    print(f"parity FAILED for {', '.join(failed)} (thresholds in {record})", file=sys.stderr)
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
