"""Block names (``BlockName``): the one spelling, its golden round trip and order, one error for every
function that takes a block name, and no other module that spells names or timm paths itself."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from clda_deploy.errors import CldaError
from clda_deploy.models.blocks import BlockName, BlockNameError, block_names, parse_in
from clda_deploy.models.encoders import MiTEncoder
from clda_deploy.models.segmenter import Segmenter, build_segmenter
from clda_deploy.uda import analysis, ema, saliency, similarity, student_init, update_probe

REPO = Path(__file__).resolve().parents[3]
MALFORMED = ["stage3.block5", "stage10.block00", "stageX.block01"]


def malformed_message(name: object) -> str:
    """The one message every function gives for a malformed name (golden: users read it)."""
    expected = "stage{s}.block{bb} with s in 1..4 and bb two digits, e.g. 'stage3.block05'"
    return f"malformed block name {name!r}: expected {expected}"


# ----- parse and format ---------------------------------------------------------------------------
GOLDEN = {
    "stage1.block00": (1, 0),
    "stage1.block09": (1, 9),
    "stage3.block05": (3, 5),
    "stage3.block39": (3, 39),  # MiT-B5's last stage-3 block
    "stage4.block99": (4, 99),
}


@pytest.mark.parametrize("text, fields", GOLDEN.items())
def test_parse_and_format_golden(text: str, fields: tuple[int, int]) -> None:
    name = BlockName.parse(text)
    assert (name.stage, name.block) == fields and name == BlockName(*fields)
    assert str(name) == text and BlockName.parse(str(name)) == name
    assert BlockName.parse(name) is name  # a BlockName passes through


def test_every_name_round_trips() -> None:
    for stage in range(1, 5):
        for block in range(100):
            name = BlockName(stage, block)
            assert BlockName.parse(str(name)) == name
            assert str(name) == f"stage{stage}.block{block:02d}"


def test_block_names_in_forward_order() -> None:
    assert block_names((2, 1, 0, 1)) == ["stage1.block00", "stage1.block01", "stage2.block00", "stage4.block00"]
    assert block_names(MiTEncoder("mit_cpu_teacher").depths) == MiTEncoder("mit_cpu_teacher").block_names()


# ----- order, equality, immutability --------------------------------------------------------------
def test_order_is_forward_order() -> None:
    shuffled = ["stage4.block00", "stage3.block10", "stage1.block01", "stage3.block02", "stage2.block00"]
    assert sorted(shuffled, key=BlockName.parse) == [
        "stage1.block01",
        "stage2.block00",
        "stage3.block02",
        "stage3.block10",
        "stage4.block00",
    ]
    a, b, c = BlockName(3, 2), BlockName(3, 10), BlockName(4, 0)
    assert a < b < c and c > b > a and a <= a and a >= a and not a < a
    assert max(c, a, b) is c and min(c, a, b) is a
    assert sorted([c, b, a]) == [a, b, c]
    # Two-digit blocks and one-digit stages: the canonical strings sort in forward order too.
    assert sorted(str(n) for n in (c, b, a)) == [str(a), str(b), str(c)]


def test_equal_names_hash_alike_and_are_frozen() -> None:
    assert {BlockName(3, 5): "x"}[BlockName.parse("stage3.block05")] == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        BlockName(3, 5).block = 6  # type: ignore[misc]


# ----- what is malformed ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        *MALFORMED,
        "stage3.block005",  # three digits
        "stage0.block00",  # stages are 1-based
        "stage5.block00",  # MiT has four stages
        "Stage3.block05",
        "stage3block05",
        " stage3.block05",
        "stage3.block05\n",
        "stage3.block\u0660\u0665",  # Arabic-Indic digits: int() reads them, str() never writes them
        "encoder.stages.2.blocks.5",  # a module path is no block name
        "",
        None,
        305,
    ],
)
def test_malformed_names_raise_one_error(text: Any) -> None:
    with pytest.raises(BlockNameError) as error:
        BlockName.parse(text)
    assert str(error.value) == malformed_message(text)


@pytest.mark.parametrize("stage, block", [(0, 0), (5, 0), (10, 0), (1, 100), (1, -1)])
def test_out_of_range_fields_raise_the_same_message(stage: int, block: int) -> None:
    with pytest.raises(BlockNameError) as error:
        BlockName(stage, block)
    assert str(error.value) == malformed_message(f"stage{stage}.block{block:02d}")


def test_non_integer_fields_are_malformed() -> None:
    for stage, block in ((True, 0), ("3", 5), (3, 5.0)):
        with pytest.raises(BlockNameError, match="malformed block name BlockName"):
            BlockName(stage, block)  # type: ignore[arg-type]


def test_the_error_is_a_clda_error_and_a_value_error() -> None:
    assert issubclass(BlockNameError, CldaError) and issubclass(BlockNameError, ValueError)


def test_parse_in_names_the_encoder_and_lists_its_blocks() -> None:
    assert parse_in("stage3.block05", (2, 2, 6, 2), "mit_cpu_teacher") == BlockName(3, 5)
    with pytest.raises(BlockNameError) as error:
        parse_in("stage3.block06", (2, 2, 6, 2), "mit_cpu_teacher")
    assert str(error.value) == (
        "no block 'stage3.block06' in encoder 'mit_cpu_teacher': its blocks are stage1.block00..stage1.block01, "
        "stage2.block00..stage2.block01, stage3.block00..stage3.block05, stage4.block00..stage4.block01"
    )
    with pytest.raises(BlockNameError, match=re.escape(malformed_message("stage3.block5"))):
        parse_in("stage3.block5", (2, 2, 6, 2), "mit_cpu_teacher")


# ----- every public function that takes a block name --------------------------------------------
@pytest.fixture(scope="module")
def pair() -> tuple[Segmenter, Segmenter]:
    torch.manual_seed(0)
    teacher = build_segmenter("mit_cpu_teacher", num_classes=3, head_channels=16).eval()
    student = build_segmenter("mit_cpu_student", num_classes=3, head_channels=16).eval()
    return teacher, student


IMAGES = torch.zeros(1, 3, 32, 32)
LABELLED = [(IMAGES, torch.zeros(1, 32, 32, dtype=torch.long))]
OK = "stage3.block00"


def _context(manager: Any) -> None:
    with manager:
        pass


# Each takes (bad name, teacher, student) and calls one function with the bad name where it takes one.
TAKES_A_BLOCK_NAME: dict[str, Callable[[str, Segmenter, Segmenter], Any]] = {
    "BlockName.parse": lambda n, t, s: BlockName.parse(n),
    "blocks.parse_in": lambda n, t, s: parse_in(n, t.encoder.depths, "mit_cpu_teacher"),
    "MiTEncoder.block": lambda n, t, s: t.encoder.block(n),
    "MiTEncoder.attention": lambda n, t, s: t.encoder.attention(n),
    "MiTEncoder.branches": lambda n, t, s: t.encoder.branches(n),
    "MiTEncoder.branch_outputs": lambda n, t, s: t.encoder.branch_outputs(n),
    "Segmenter.block": lambda n, t, s: t.block(n),
    "Segmenter.block_state_prefix": lambda n, t, s: t.block_state_prefix(n),
    "Segmenter.capture_attention": lambda n, t, s: _context(t.capture_attention([OK, n])),
    "Segmenter.skip_blocks": lambda n, t, s: _context(t.skip_blocks([OK, n])),
    "saliency.layer_saliency": lambda n, t, s: saliency.layer_saliency(t, IMAGES, "agreement", names=[n]),
    "saliency.teacher_saliency": lambda n, t, s: saliency.teacher_saliency(t, LABELLED, names=[n]),
    "saliency.select_nonsalient": lambda n, t, s: saliency.select_nonsalient(
        [{"block": OK, "salient": False}, {"block": n, "salient": False}]
    ),
    "similarity.same_stage_candidates(teacher)": lambda n, t, s: similarity.same_stage_candidates(n, [OK]),
    "similarity.same_stage_candidates(students)": lambda n, t, s: similarity.same_stage_candidates(OK, [OK, n]),
    "similarity.SimilarityAccumulator(teacher)": lambda n, t, s: similarity.SimilarityAccumulator([n], [OK]),
    "similarity.SimilarityAccumulator(students)": lambda n, t, s: similarity.SimilarityAccumulator([], [n]),
    "similarity.random_mapping(teacher)": lambda n, t, s: similarity.random_mapping([n], [OK]),
    "similarity.random_mapping(students)": lambda n, t, s: similarity.random_mapping([], [n]),
    "similarity.mapping_entries(teacher)": lambda n, t, s: similarity.mapping_entries({n: (OK, 1.0)}),
    "similarity.mapping_entries(student)": lambda n, t, s: similarity.mapping_entries({OK: n}),
    "ema.ema_update_pairs(target)": lambda n, t, s: ema.ema_update_pairs(t, s, {n: OK}, alpha=0.5),
    "ema.ema_update_pairs(source)": lambda n, t, s: ema.ema_update_pairs(t, s, {OK: n}, 0.5, scope="attention"),
    "student_init.most_salient": lambda n, t, s: student_init.most_salient([{"block": n, "delta": 0.0}], 3, 1),
    "student_init.student_block_sources": lambda n, t, s: student_init.student_block_sources(
        t, s, "salient", [{"block": n, "delta": 0.0}]
    ),
    "student_init.initialise_from_teacher": lambda n, t, s: student_init.initialise_from_teacher(
        s, t, {**{name: name for name in s.block_names()}, OK: n}
    ),
    "analysis.block_outputs": lambda n, t, s: analysis.block_outputs(t, IMAGES, names=[OK, n]),
    "analysis.pvr": lambda n, t, s: analysis.pvr(t, t, names=[n]),
    "analysis.pvr(modules)": lambda n, t, s: analysis.pvr(t, t, modules=("attn",), names=[n]),
    "analysis.scores_matrix": lambda n, t, s: analysis.scores_matrix({OK: {n: 1.0}}),
    "update_probe.blend_block": lambda n, t, s: update_probe.blend_block(t, n, s.block(OK), 0.5),
    "update_probe.shrink_block": lambda n, t, s: update_probe.shrink_block(t, n, 0.5),
    "update_probe.probe": lambda n, t, s: update_probe.probe(t, s, LABELLED, blocks=[n], progress=False),
}


@pytest.mark.parametrize("name", MALFORMED)
@pytest.mark.parametrize("function", TAKES_A_BLOCK_NAME.values(), ids=TAKES_A_BLOCK_NAME.keys())
def test_every_function_taking_a_block_name_refuses_malformed_names_alike(
    function: Callable[[str, Segmenter, Segmenter], Any], name: str, pair: tuple[Segmenter, Segmenter]
) -> None:
    teacher, student = pair
    before = {key: value.clone() for key, value in {**teacher.state_dict(), **student.state_dict()}.items()}
    with pytest.raises(BlockNameError) as error:
        function(name, teacher, student)
    assert str(error.value) == malformed_message(name)
    after = {**teacher.state_dict(), **student.state_dict()}
    assert all(torch.equal(before[key], after[key]) for key in before), "a refused name must change nothing"
    for model in (teacher, student):
        for block_name in model.block_names():
            block, attention = model.block(block_name), model.encoder.attention(block_name)
            assert not block._forward_hooks and not attention._forward_hooks and "forward" not in block.__dict__


# ----- one place for the spelling and the timm paths ----------------------------------------------
# Outside clda_deploy/models/ no module may parse or spell block names itself, nor reach into timm's
# modules: BlockName and the encoder's block contract do both.
FORBIDDEN = {
    "a block-name regex or spelling": re.compile(r"stage\(|stage\[|stage\\d|block\(\\|block\(\[|block\\d|stage\{"),
    "a timm attribute path": re.compile(r"patch_embed|\.stages\b|(?<!models)\.blocks\b|\.attn\b|\battn\.|\bmlp\.fc"),
}


def test_no_module_outside_models_spells_block_names_or_timm_paths() -> None:
    files = [
        path for folder in ("clda_deploy", "training", "export", "serving") for path in (REPO / folder).rglob("*.py")
    ]
    models = REPO / "clda_deploy" / "models"
    offences = [
        f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}"
        for path in files
        if models not in path.parents
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        for what, pattern in FORBIDDEN.items()
        if pattern.search(line)
    ]
    assert len(files) > 20 and not offences, "\n".join(offences)
