"""Stage 2: ``python -m export`` turns a ``model.safetensors`` into deployable files (DESIGN §3, §8).

``to_onnx`` (ONNX + fp16 ONNX), ``to_tensorrt`` (TensorRT engine + sidecar), ``parity`` (the mIoU
gate against PyTorch) and ``triton`` (a Triton model repository). Exit codes of the command line:
0 success, 2 bad input or unusable tool (one ``error: ...`` line), 3 the parity gate failed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


class ExportError(RuntimeError):
    """An export step cannot run; the message names the file and the problem (exit code 2)."""


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``clda_deploy.checkpoint.atomic_write`` (temp file + fsync + rename), then the usual file mode.

    mkstemp creates 0600 files; exported models are read by servers that may run as another user
    (a container, Triton), so they get ``0666 & ~umask`` like any file ``open`` creates.
    """
    from clda_deploy.checkpoint import atomic_write

    def write_readable(tmp: Path) -> None:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)

    return atomic_write(path, write_readable)
