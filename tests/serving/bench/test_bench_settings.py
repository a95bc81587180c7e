"""Each command's settings dataclass is the one place its flags are spelled."""

import pytest

from serving.bench.__main__ import COMMANDS, build_parser
from serving.bench.common import BenchError, recorded_settings, settings_from_args
from serving.bench.http_bench import HttpSettings
from serving.bench.latency import LatencySettings


def parse(argv):
    args = build_parser().parse_args(argv)
    return settings_from_args(COMMANDS[args.command].settings, args)


def test_flags_become_typed_frozen_settings():
    settings = parse(["latency", "--sizes", "32x64", "64x128", "--batches", "1", "2", "--logits", "--no-progress",
                      "--model", "a=x.onnx", "--model", "b=y.onnx", "--threads", "3"])  # fmt: skip
    assert isinstance(settings, LatencySettings)
    assert settings.sizes == ((32, 64), (64, 128)) and settings.batches == (1, 2) and settings.threads == 3
    assert settings.want_logits and not settings.progress and settings.model_specs == ("a=x.onnx", "b=y.onnx")
    assert settings.iters == 20 and settings.run_dir == "runs/default", "defaults come from the dataclass"
    record = recorded_settings(settings)
    assert record["sizes"] == [[32, 64], [64, 128]] and "model_specs" not in record and "out" not in record


def test_defaults_of_a_bare_command_equal_the_dataclass_defaults():
    assert parse(["http", "--spawn"]) == HttpSettings(spawn=True, threads=HttpSettings().threads)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["http"])  # --url or --spawn is required


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["latency", "--iters", "0"], "--iters"), (["latency", "--batches", "1", "0"], "--batches"),
     (["http", "--spawn", "--concurrency", "0"], "--concurrency"), (["accuracy", "--max-images", "0"], "--max-images")],
)  # fmt: skip
def test_non_positive_values_name_their_flag(argv, flag):
    with pytest.raises(BenchError, match=f"^{flag} must be positive"):
        parse(argv)
