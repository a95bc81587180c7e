"""Run by torchrun in test_teacher.py: each rank trains the smoke teacher, then dumps its weights.
Arguments: the SynthCity root, the output folder, then extra ``key=value`` overrides (e.g. uda.method=hrda).

Each rank gets its own run folder name (run<rank>) so the test can see that rank 1 writes nothing.
"""

import os
import sys
from pathlib import Path

import torch

from clda_deploy.config import load_config
from training.teacher import train_teacher

root, out = Path(sys.argv[1]), Path(sys.argv[2])
rank = int(os.environ["RANK"])
smoke = Path(__file__).resolve().parents[2] / "training" / "configs" / "smoke_teacher.yaml"
cfg = load_config(smoke, [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
                          f"data.val.root={root / 'target'}", "train.iters=3", *sys.argv[3:]])  # fmt: skip
result, _ = train_teacher(cfg, out / f"run{rank}")
torch.save({name: p.detach().clone() for name, p in result.model.named_parameters()}, out / f"weights{rank}.pt")
