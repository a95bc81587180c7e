"""Segmenter: shapes, block addressing, attention capture, block skipping, traceability."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import clda_deploy
from clda_deploy.models.blocks import BlockName, BlockNameError
from clda_deploy.models.encoders import feature_shapes
from clda_deploy.models.segmenter import Segmenter, build_segmenter


@pytest.fixture(scope="module")
def model() -> Segmenter:
    torch.manual_seed(0)
    return build_segmenter("mit_cpu_student", num_classes=5, head_channels=32).eval()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(2, 3, 96, 160)


@pytest.mark.parametrize("head", ["daformer", "segformer"])
@pytest.mark.parametrize("height, width", [(64, 64), (100, 150), (96, 160)])
def test_logits_at_input_resolution(head: str, height: int, width: int) -> None:
    torch.manual_seed(0)
    model = build_segmenter("mit_cpu_student", head=head, num_classes=7, head_channels=32).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, height, width))
    assert logits.shape == (2, 7, height, width)


def test_spec_and_package_root_forwarding() -> None:
    model = clda_deploy.build_segmenter("mit_cpu_student", "segformer", 4, head_channels=16)
    assert model.spec == {"encoder": "mit_cpu_student", "head": "segformer", "num_classes": 4, "head_channels": 16}
    rebuilt = build_segmenter(**model.spec)
    assert list(rebuilt.state_dict()) == list(model.state_dict())


def test_unknown_head_or_encoder_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="daformer, segformer"):
        build_segmenter("mit_cpu_student", head="uper")
    with pytest.raises(ValueError, match="mit_cpu_student"):
        build_segmenter("mit_b7")


def test_block_names_in_forward_order() -> None:
    model = build_segmenter("mit_cpu_teacher")
    names = model.block_names()
    assert len(names) == sum((2, 2, 6, 2)) == 12
    assert all(str(BlockName.parse(name)) == name for name in names)  # canonical spellings
    assert names[:3] == ["stage1.block00", "stage1.block01", "stage2.block00"]
    assert "stage3.block05" in names and names[-1] == "stage4.block01"
    # Forward order: hooks fire in the order of the names.
    fired: list[str] = []
    handles = [model.block(name).register_forward_hook(lambda *_, n=name: fired.append(n)) for name in names]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, 64, 64))
    for handle in handles:
        handle.remove()
    assert fired == names


def test_block_names_mit_b5() -> None:
    with torch.device("meta"):
        model = build_segmenter("mit_b5")
    names = model.block_names()
    assert len(names) == 3 + 6 + 40 + 3
    assert names[-4] == "stage3.block39"
    assert model.block("stage3.block39") is model.encoder.stages[2].blocks[39]


def test_block_lookup(model: Segmenter) -> None:
    assert model.block("stage3.block01") is model.encoder.stages[2].blocks[1]
    assert model.block(BlockName(3, 1)) is model.encoder.stages[2].blocks[1]
    assert model.block_state_prefix("stage3.block01") == "encoder.stages.2.blocks.1"
    with pytest.raises(BlockNameError, match="no block 'stage3.block02' in encoder 'mit_cpu_student'.*stage1.block00"):
        model.block("stage3.block02")
    for wrong in ("stage5.block00", "stage3.block1", "stage0.block00", "encoder"):
        with pytest.raises(BlockNameError, match=f"malformed block name '{wrong}'"):
            model.block(wrong)


def test_attention_capture_shapes(model: Segmenter, image: torch.Tensor) -> None:
    names = model.block_names()
    shapes = feature_shapes(model.encoder, *image.shape[-2:])
    with torch.no_grad(), model.capture_attention(names) as captured:
        model(image)
    assert list(captured) == names
    for name, tensor in captured.items():
        stage = int(name[5]) - 1
        channels, height, width = shapes[stage]
        assert tensor.shape == (2, height * width, channels)
    assert all(not block.attn._forward_hooks for block in map(model.block, names))


def test_attention_capture_is_the_branch_before_the_residual(model: Segmenter, image: torch.Tensor) -> None:
    block = model.block("stage3.block01")
    seen = {}
    handle = block.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
    with torch.no_grad(), model.capture_attention(["stage3.block01"]) as captured:
        model(image)
        tokens, feature_size = seen["args"]
        expected = block.attn(block.norm1(tokens), feature_size)  # projection included, no residual
    handle.remove()
    torch.testing.assert_close(captured["stage3.block01"], expected)
    assert not torch.allclose(captured["stage3.block01"], seen["output"])


def test_attention_hooks_removed_on_exception(model: Segmenter, image: torch.Tensor) -> None:
    with pytest.raises(RuntimeError, match="boom"), model.capture_attention(["stage1.block00"]):
        raise RuntimeError("boom")
    assert not model.block("stage1.block00").attn._forward_hooks
    with pytest.raises(BlockNameError):  # a bad name registers nothing
        with model.capture_attention(["stage1.block00", "stage9.block00"]):
            pass
    assert not model.block("stage1.block00").attn._forward_hooks


def test_skip_is_identity_and_restored(model: Segmenter, image: torch.Tensor) -> None:
    name = "stage3.block01"
    block = model.block(name)
    with torch.no_grad():
        before = model(image)
        # Reference: the same model where that block's output is replaced by its input.
        handle = block.register_forward_hook(lambda module, args, output: args[0])
        reference = model(image)
        handle.remove()
        seen = {}
        handle = block.register_forward_hook(lambda module, args, output: seen.update(args=args, output=output))
        with model.skip_blocks([name]):
            skipped = model(image)
        handle.remove()
        after = model(image)
    assert torch.equal(seen["output"], seen["args"][0])  # the block passed its tokens through unchanged
    assert not torch.allclose(skipped, before)
    torch.testing.assert_close(skipped, reference)
    assert torch.equal(after, before)
    assert "forward" not in block.__dict__


def test_skip_restored_on_exception_and_when_nested(model: Segmenter, image: torch.Tensor) -> None:
    with torch.no_grad():
        before = model(image)
        with pytest.raises(RuntimeError, match="boom"), model.skip_blocks(["stage2.block00"]):
            raise RuntimeError("boom")
        with model.skip_blocks(["stage2.block00"]):
            once = model(image)
            with model.skip_blocks(["stage2.block00", "stage4.block00"]):
                model(image)
            assert torch.equal(model(image), once)
        assert torch.equal(model(image), before)
    with pytest.raises(BlockNameError), model.skip_blocks(["stage2.block00", "nope"]):
        pass
    assert all("forward" not in model.block(name).__dict__ for name in model.block_names())


def test_state_dict_keys_unchanged_by_skip_and_capture(model: Segmenter) -> None:
    keys = list(model.state_dict())
    with model.skip_blocks(["stage1.block00"]), model.capture_attention(model.block_names()):
        assert list(model.state_dict()) == keys
    assert list(model.state_dict()) == keys


def test_eval_is_deterministic(model: Segmenter, image: torch.Tensor) -> None:
    with torch.no_grad():
        assert torch.equal(model(image), model(image))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace is deprecated; still what ONNX legacy uses
def test_trace_generalises_to_other_sizes(model: Segmenter, image: torch.Tensor) -> None:
    # The legacy ONNX exporter traces: a trace at one size must stay correct at others.
    with torch.no_grad():
        traced = torch.jit.trace(model, image)
        for shape in [(1, 3, 64, 64), (3, 3, 100, 150)]:
            other = torch.randn(*shape)
            torch.testing.assert_close(traced(other), model(other))


def test_training_mode_backpropagates() -> None:
    torch.manual_seed(0)
    model = build_segmenter("mit_cpu_student", num_classes=3, head_channels=16).train()
    logits = model(torch.randn(2, 3, 64, 64))
    nn.functional.cross_entropy(logits, torch.randint(0, 3, (2, 64, 64))).backward()
    assert all(parameter.grad is not None for parameter in model.parameters())
