"""Forking a student run: start a run from another run's snapshot instead of from step 0.

The CLDA ablation rows train the student identically up to T2 (every similarity mode) or T3 (``none``,
``random``, and the same mode with another alpha), because LSR and the similarity sums only read the
models (tests/training/test_fork.py checks the snapshots bit for bit). So one prefix run per (seed,
init) keeps snapshots at T2 and T3 (``LoopInputs.snapshots``), and each row resumes from a copy with
its own config. A resumed run draws new crop randomness from the restored RNG (the data loader's
worker seed), so a fork is not the bit-for-bit continuation of a scratch run; but every fork of one
snapshot gets the same data stream, so rows forked together differ only in what their configs change.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from clda_deploy.artifacts import CHECKPOINT_FILE, MAPPING_FILE, SALIENCY_FILE
from clda_deploy.config import Config, config_to_dict, stage_iterations
from training.errors import UsageError
from training.run import RESUMABLE_CHANGES, config_differences, flatten

# Keys a fork may change besides those a resume may change: what separates the ablation's rows.
FORKABLE_CHANGES = ("clda.mapping", "clda.alpha", "clda.saliency_rule")
COPIED_FILES = ("student_init.json",)


def fork_student(snapshot: Path, cfg: Config, run_dir: Path, saliency_from: Path | None = None) -> Path:
    """Write ``run_dir/checkpoint.pt`` from ``snapshot`` for a run of ``cfg``; the caller then resumes.

    ``saliency_from``: a later snapshot of the same run (e.g. at T3) whose LSR rows (Eq. 2 deltas, measured
    at T2 on the unchanged teacher and the same images) a fork at T2 reuses instead of measuring again;
    only the saliency rule is applied anew.

    Raises UsageError when ``cfg`` differs from the snapshot's config in anything but the forkable keys,
    or when the snapshot's point cannot serve ``cfg``'s mapping mode (``forked_task_state``)."""
    from clda_deploy.uda.clda import forked_task_state
    from training.state import load_checkpoint, save_checkpoint

    state = load_checkpoint(snapshot)
    old, new = flatten(state["config"]), flatten(config_to_dict(cfg))
    # A fork may not change train.iters (a resume may): T2 and T3 are fractions of it, and the snapshot's
    # mapping was made on its own schedule.
    resumable = tuple(key for key in RESUMABLE_CHANGES if key != "train.iters")
    details = config_differences(state["config"], cfg, resumable, FORKABLE_CHANGES)
    if details:
        raise UsageError(
            f"cannot fork {snapshot}: the runs differ in more than {', '.join(FORKABLE_CHANGES)} ({details})"
        )
    t2, t3 = stage_iterations(cfg)
    iteration = int(state["iteration"])
    if old.get("clda.saliency_rule") != new.get("clda.saliency_rule") and iteration > t2:
        raise UsageError(f"cannot fork {snapshot} (iteration {iteration}) to another clda.saliency_rule: "
                         f"the non-salient blocks are picked at T2 = {t2}; fork at T2")  # fmt: skip
    state["task"] = forked_task_state(state["task"], cfg.clda.mapping, t2, t3, iteration)
    if saliency_from is not None:
        measured = load_checkpoint(saliency_from)
        if flatten(measured["config"]).get("clda.saliency_data") != new.get("clda.saliency_data"):
            raise UsageError(f"{saliency_from} measured LSR on other images (clda.saliency_data)")
        if measured["task"]["saliency"] is not None and state["task"]["picked"] is None:
            state["task"]["measured_saliency"] = measured["task"]["saliency"]
    state["config"] = config_to_dict(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        if (snapshot.parent / name).is_file():
            shutil.copyfile(snapshot.parent / name, run_dir / name)
    for name, key in ((SALIENCY_FILE, "saliency"), (MAPPING_FILE, "mapping")):
        if state["task"][key] is not None and (snapshot.parent / name).is_file():
            shutil.copyfile(snapshot.parent / name, run_dir / name)
    save_checkpoint(run_dir / CHECKPOINT_FILE, state)
    return run_dir / CHECKPOINT_FILE
