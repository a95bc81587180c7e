"""Block names and the block contract an encoder offers CLDA (DESIGN §3, §6).

Every file and log names a transformer block ``stage{s}.block{bb}``: ``s`` the 1-based stage (MiT has
four, so one digit 1..4), ``bb`` the 0-based index inside the stage, always two digits (MiT-B5's
deepest stage has 40 blocks). ``BlockName`` is the one parser and formatter of that spelling, so
saliency.json, mapping.json and checkpoints written by any version read back the same way.

Malformed, and refused with ``BlockNameError`` (one message form, naming the bad value and showing
the expected one): anything that is not exactly ``stage<digit>.block<two digits>`` (``stage3.block5``,
``stage3.block005``, ``stageX.block01``, surrounding spaces, a trailing newline, non-ASCII digits),
and a stage outside 1..4 (``stage0.block00``, ``stage10.block00``). A well-formed name the encoder
at hand does not have (``stage3.block39`` on a 6-block stage) is a ``BlockNameError`` too, with a
message listing the blocks that encoder has (``parse_in``).

``BlockEncoder`` spells what CLDA and its analyses need of an encoder; ``MiTEncoder``
(``encoders.py``) implements it and is the only module that knows timm's attribute paths.
This module imports neither torch nor timm, so configs can validate block names cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from clda_deploy.errors import CldaError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["BlockEncoder", "BlockName", "BlockNameError", "EXPECTED_FORM", "block_names", "parse_in"]

STAGES = range(1, 5)  # MiT's four stages, 1-based as in the names
BLOCKS = range(100)  # two digits
EXPECTED_FORM = f"stage{{s}}.block{{bb}} with s in {STAGES[0]}..{STAGES[-1]} and bb two digits, e.g. 'stage3.block05'"
# One digit and two, exactly as str() writes them (the ranges are checked by BlockName itself); [0-9],
# not \d: \d also matches non-ASCII digits, which int() accepts but str() never writes.
_SPELLING = re.compile(r"stage([0-9])\.block([0-9]{2})")


class BlockNameError(CldaError, ValueError):
    """A block name that is malformed, or that names no block of the encoder it is used with."""


def _malformed(value: object) -> BlockNameError:
    return BlockNameError(f"malformed block name {value!r}: expected {EXPECTED_FORM}")


@dataclass(frozen=True, order=True)
class BlockName:
    """One transformer block: ``stage`` 1..4 and ``block`` 0..99 (0-based inside the stage).

    Ordered by (stage, block), which is the forward order, so ``sorted(names, key=BlockName.parse)``
    sorts block names as the encoder runs them (``stage3.block02`` before ``stage3.block10``).
    ``str()`` gives the canonical spelling and ``BlockName.parse(str(name)) == name``.
    """

    stage: int
    block: int

    def __post_init__(self) -> None:
        # type() rather than isinstance(): True is an int but no stage number.
        valid = type(self.stage) is int and type(self.block) is int
        if not (valid and self.stage in STAGES and self.block in BLOCKS):
            raise _malformed(f"stage{self.stage}.block{self.block:02d}" if valid else self)

    @classmethod
    def parse(cls, text: str | BlockName) -> BlockName:
        """``"stage3.block05"`` -> ``BlockName(3, 5)``; a BlockName passes through unchanged.

        Raises BlockNameError for anything else (module docstring: what counts as malformed)."""
        if isinstance(text, BlockName):
            return text
        match = _SPELLING.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise _malformed(text)
        return cls(int(match[1]), int(match[2]))

    def __str__(self) -> str:
        return f"stage{self.stage}.block{self.block:02d}"


def block_names(depths: Sequence[int]) -> list[str]:
    """Every block of an encoder with these stage depths, in forward order:
    ``block_names((2, 1)) == ["stage1.block00", "stage1.block01", "stage2.block00"]``."""
    return [str(BlockName(stage, index)) for stage, depth in enumerate(depths, start=1) for index in range(depth)]


def parse_in(text: str | BlockName, depths: Sequence[int], encoder: str) -> BlockName:
    """``BlockName.parse(text)``, checked against an encoder with stage ``depths`` named ``encoder``.

    Raises BlockNameError: the malformed-name message, or, for a well-formed name beyond the
    encoder's depth, one naming the encoder and listing its blocks stage by stage."""
    name = BlockName.parse(text)
    if name.stage <= len(depths) and name.block < depths[name.stage - 1]:
        return name
    ranges = ", ".join(
        f"{BlockName(stage, 0)}..{BlockName(stage, depth - 1)}"
        for stage, depth in enumerate(depths, start=1)
        if depth > 0
    )
    raise BlockNameError(f"no block {str(name)!r} in encoder {encoder!r}: its blocks are {ranges}")


class BlockEncoder(Protocol):
    """What CLDA needs of an encoder, by block name (a ``str`` or a ``BlockName``).

    Every method raises BlockNameError for a malformed name or one the encoder lacks (``parse_in``).
    A block maps tokens ``[B, N, C]`` to ``[B, N, C]``, C = ``embed_dims[s - 1]``, N = H_s * W_s.
    """

    name: str
    depths: tuple[int, ...]  # blocks per stage
    embed_dims: tuple[int, ...]  # stage widths C_s: blocks exchange weights (Eq. 8) only at equal widths

    def block_names(self) -> list[str]:
        """Every block in forward order (``block_names(self.depths)``)."""
        ...

    def block(self, name: str | BlockName) -> nn.Module:
        """The block module; skipping it (Eq. 2) replaces its forward, Eq. 8 averages its tensors."""
        ...

    def attention(self, name: str | BlockName) -> nn.Module:
        """The block's attention branch: its forward output ``[B, N, C]`` is the attention output
        after the output projection and before the residual add (A of Eq. 6)."""
        ...

    def branches(self, name: str | BlockName) -> dict[str, nn.Module]:
        """The block's residual branches by the keys analyses report (``{"attn": ..., "mlp": ...}``)."""
        ...

    def branch_outputs(self, name: str | BlockName) -> list[nn.Module]:
        """The last linear layer of each residual branch: scaling its weight and bias scales the branch."""
        ...
