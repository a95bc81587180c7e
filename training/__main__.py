"""``python -m training {data,teacher,student,eval,analyze,ablation,baselines,gap}``: stage 1's command line.

Every command validates its config and inputs before any work and reports problems as one
``error: ...`` line with exit status 2 (DESIGN §3, §4): those are ``CldaError`` (clda_deploy/errors.py).
Any other exception (a shape mismatch, CUDA out of memory, a bug) keeps its traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from clda_deploy.artifacts import RunLayout


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override config values, e.g. --set train.iters=100 data.crop=[256,256]",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="generate the SynthCity two-domain benchmark")
    data.add_argument("--out", default="data/synthcity", help="output folder (default: data/synthcity)")
    data.add_argument("--source", type=int, default=2000, help="source (game style) images")
    data.add_argument("--target", type=int, default=1000, help="target-train (street style) images")
    data.add_argument("--val", type=int, default=200, help="target-val images")
    data.add_argument("--height", type=int, default=256)
    data.add_argument("--width", type=int, default=512)
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--gap", type=float, default=1.0, help="domain gap: 0 = same style, 1 = default")
    data.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")

    evaluate = sub.add_parser("eval", help="evaluate a model file on target-val")
    evaluate.add_argument("--checkpoint", required=True, help="model.safetensors written by clda-deploy")
    evaluate.add_argument("-c", "--config", default=None, help="YAML applied over the checkpoint's own config")
    evaluate.add_argument("--out", default=None, help="metrics.json path (default: next to the checkpoint)")
    evaluate.add_argument(
        "--save-predictions",
        default=None,
        metavar="DIR",
        help="write one prediction PNG per image (Cityscapes labelIds for Cityscapes data)",
    )
    add_set_argument(evaluate)

    teacher = sub.add_parser("teacher", help="train the DAFormer UDA teacher (or a baseline: uda.mode)")
    teacher.add_argument(
        "-c", "--config", required=True, help="YAML config, e.g. training/configs/synthcity_daformer.yaml"
    )
    teacher.add_argument("--out", default=None, help=f"run folder (default: {RunLayout().run_dir('teacher')})")
    teacher.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    add_set_argument(teacher)

    student = sub.add_parser("student", help="train the CLDA student from a trained teacher")
    student.add_argument("-c", "--config", required=True, help="YAML config, e.g. training/configs/synthcity_clda.yaml")
    student.add_argument("--teacher", required=True, help="the teacher's model.safetensors")
    student.add_argument("--out", default=None, help=f"run folder (default: {RunLayout().run_dir('student')})")
    student.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    add_set_argument(student)

    analyze = sub.add_parser("analyze", help="the paper's analyses (Fig. 2-5): PNG + JSON")
    analyze.add_argument("kind", choices=["saliency", "cka", "pvr", "similarity", "update-probe"])
    analyze.add_argument("--teacher", required=True, help="first model: the teacher (for pvr: the distilled student)")
    analyze.add_argument(
        "--student", required=True, help="second model: the student (for pvr: the independently trained student)"
    )
    analyze.add_argument("-c", "--config", default=None, help="YAML over the first model's config (data.val)")
    analyze.add_argument("--out", default=str(RunLayout().analysis))
    analyze.add_argument(
        "--images", type=int, default=16, help="target images to measure on (saliency: those clda.saliency_data names)"
    )
    analyze.add_argument(
        "--weights",
        type=float,
        nargs="+",
        default=[0.3, 1.0],
        metavar="W",
        help="update-probe only: blend weights w = 1 - alpha of Eq. 8, each in [0, 1] (default: 0.3 1.0)",
    )
    add_set_argument(analyze)

    ablation = sub.add_parser("ablation", help="the CLDA ablation rows (paper Tab. 3) over seeds")
    ablation.add_argument("-c", "--config", required=True, help="the student config, e.g. synthcity_clda.yaml")
    ablation.add_argument("--teacher", default=str(RunLayout().model("teacher")))
    ablation.add_argument("--seeds", type=int, default=5, help="seeds of the main rows (0 .. N-1)")
    ablation.add_argument(
        "--extra-seeds", type=int, default=3, help="seeds of clda_token, clda_both and clda_placebo (0 .. N-1)"
    )
    ablation.add_argument(
        "--shard",
        default=None,
        metavar="K/N",
        help="train only the K-th of N shares (run N processes, then once more without)",
    )
    ablation.add_argument("--placebo-alpha", type=float, default=0.99999, help="clda.alpha of the placebo row")
    ablation.add_argument(
        "--signed",
        action="store_true",
        help="also the clda_signed row (saliency_rule: signed) over the extra seeds",
    )
    ablation.add_argument("--rows", nargs="+", default=None, metavar="ROW",
                          help="only these main rows (default all: independent_student kd_only clda_random "
                          "clda_channel)")  # fmt: skip
    ablation.add_argument("--inits", nargs="+", default=None, metavar="INIT",
                          help="only these clda.student_init values (default: random teacher)")  # fmt: skip
    ablation.add_argument("--section", default="clda_ablation", help="the results.md section the table replaces")
    ablation.add_argument("--runs", default="runs/ablation", help="one run folder per (row, seed) inside")
    ablation.add_argument("--out", default="docs/results.md", help="markdown file whose ablation table is replaced")
    ablation.add_argument("--json", default="docs/results/clda_ablation.json")
    add_set_argument(ablation)

    baselines = sub.add_parser("baselines", help="source-only / DAFormer UDA / oracle over seeds (calibration)")
    baselines.add_argument("-c", "--config", required=True)
    baselines.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    baselines.add_argument("--runs", default="runs/baselines", help="one run folder per (mode, seed) inside")
    baselines.add_argument("--json", default="docs/results/uda_baselines.json", help="summary JSON")
    baselines.add_argument("--out", default="docs/results.md", help="markdown file whose baselines table is replaced")
    baselines.add_argument("--scheme", action="append", default=[], metavar="ROW=CONFIG",
                           help="a UDA row from another config: hrda=training/configs/synthcity_hrda.yaml")  # fmt: skip
    baselines.add_argument("--only", nargs="+", default=None, metavar="ROW",
                           help="compute only these rows; carry the others over from --json")  # fmt: skip
    add_set_argument(baselines)

    gap = sub.add_parser("gap", help="score models on SynthCity scenes with groups of the domain gap removed")
    gap.add_argument(
        "--model",
        dest="models",
        action="append",
        default=[],
        required=True,
        metavar="NAME=PATH",
        help="a model file to score, named for the table (repeat for several)",
    )
    gap.add_argument("--images", type=int, default=100, help="target-val scenes per style (default: 100)")
    gap.add_argument("--seed", type=int, default=0, help="the benchmark's seed (default: 0)")
    gap.add_argument("--height", type=int, default=256)
    gap.add_argument("--width", type=int, default=512)
    gap.add_argument("--json", default=None, help="also write the scores to this JSON file")
    gap.add_argument("--device", default="cpu", help="cpu, cuda or auto")

    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from clda_deploy.config import load_config
    from clda_deploy.errors import CldaError
    from training.run import run_dir_for

    try:
        if args.command == "data":
            from clda_deploy.data.synthcity import generate_synthcity

            generate_synthcity(
                args.out,
                num_source=args.source,
                num_target=args.target,
                num_val=args.val,
                height=args.height,
                width=args.width,
                seed=args.seed,
                workers=args.workers,
                gap=args.gap,
            )
        elif args.command == "teacher":
            from training.teacher import run_teacher

            run_teacher(load_config(args.config, args.overrides), run_dir_for(args.out, "teacher"), args.resume)
        elif args.command == "student":
            from training.student import run_student

            cfg = load_config(args.config, args.overrides)
            run_student(cfg, args.teacher, run_dir_for(args.out, "student"), args.resume)
        elif args.command == "analyze":
            from training.studies.analyze import run_analysis

            run_analysis(
                args.kind,
                args.teacher,
                args.student,
                args.config,
                args.overrides,
                args.out,
                args.images,
                weights=args.weights,
            )
        elif args.command == "ablation":
            from training.studies.ablation import run_ablation

            run_ablation(
                args.config,
                args.teacher,
                args.overrides,
                list(range(args.seeds)),
                args.runs,
                args.out,
                args.json,
                extra_seeds=list(range(min(args.extra_seeds, args.seeds))),
                shard=args.shard,
                placebo_alpha=args.placebo_alpha,
                signed=args.signed,
                rows=args.rows,
                inits=args.inits,
                section=args.section,
            )
        elif args.command == "baselines":
            from training.studies.baselines import run_baselines

            run_baselines(args.config, args.overrides, args.seeds, args.runs, args.json, args.out, schemes=args.scheme,
                          only=args.only)  # fmt: skip
        elif args.command == "gap":
            from training.studies.gap_study import run_gap_study

            command = "python -m training " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
            run_gap_study(
                args.models,
                args.images,
                args.seed,
                (args.height, args.width),
                args.json,
                args.device,
                command=command,
            )
        elif args.command == "eval":
            from training.evaluate import run_eval

            run_eval(args.checkpoint, args.config, args.overrides, args.out, args.save_predictions)
    except CldaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
