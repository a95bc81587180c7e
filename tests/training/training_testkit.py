"""Helpers the training tests share (a module, not a conftest, so tests can import it by name)."""

from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def synthcity_overrides(root: Path) -> list[str]:
    """``--set`` values pointing a config at a SynthCity folder (target-train also serves as val)."""
    return [f"data.source.root={root / 'source'}", f"data.target.root={root / 'target'}",
            f"data.val.root={root / 'target'}"]  # fmt: skip
