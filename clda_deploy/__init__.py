"""clda-deploy: compress a domain-adapted segmenter into a small, fast one (CLDA, AAAI 2025).

Nothing heavy is imported here: ``build_segmenter`` and ``load_segmenter`` import torch lazily,
so ``import clda_deploy`` stays fast for config validation and the CLIs' error paths.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["build_segmenter", "load_segmenter", "__version__"]

if TYPE_CHECKING:
    from clda_deploy.models.segmenter import Segmenter


def build_segmenter(encoder: str, head: str = "daformer", num_classes: int = 19, **kwargs: Any) -> Segmenter:
    """A randomly initialised segmenter (encoder preset name, head name); see models.segmenter."""
    from clda_deploy.models.segmenter import build_segmenter as _build

    return _build(encoder, head=head, num_classes=num_classes, **kwargs)


def load_segmenter(path: str, device: str = "cpu") -> Segmenter:
    """Rebuild a segmenter in eval mode from a ``model.safetensors`` file alone."""
    from clda_deploy.checkpoint import load_segmenter as _load

    return _load(path, device=device)
