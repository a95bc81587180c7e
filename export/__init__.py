"""Stage 2: ``python -m export`` turns a ``model.safetensors`` into deployable files (DESIGN §3, §8).

``to_onnx`` (ONNX + fp16 ONNX), ``to_tensorrt`` (TensorRT engine + sidecar), ``parity`` (the mIoU
gate against PyTorch) and ``triton`` (a Triton model repository). Exit codes of the command line:
0 success, 2 bad input or unusable tool (one ``error: ...`` line), 3 the parity gate failed.
"""

from __future__ import annotations

from clda_deploy.checkpoint import atomic_write as write_atomic  # temp file + fsync + rename
from clda_deploy.errors import CldaError

__all__ = ["ExportError", "write_atomic"]


class ExportError(CldaError, RuntimeError):
    """An export step cannot run; the message names the file and the problem (exit code 2)."""
