import pytest
import torch
import torch.distributed as dist

from clda_deploy.uda.clda import CLDATask
from clda_deploy.uda.similarity import SimilarityAccumulator


def test_scores_are_summed_across_ranks_under_a_process_group():
    accumulator = SimilarityAccumulator(["stage1.block01"], ["stage1.block00"], "channel")
    accumulator.scores["stage1.block01"]["stage1.block00"] = 2.5
    CLDATask._sum_across_ranks(accumulator)  # no process group: unchanged
    assert accumulator.scores["stage1.block01"]["stage1.block00"] == 2.5
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29547", rank=0, world_size=1)
    try:
        CLDATask._sum_across_ranks(accumulator)  # one rank: the sum is the value itself
        assert accumulator.scores["stage1.block01"]["stage1.block00"] == pytest.approx(2.5)
        assert torch.distributed.get_world_size() == 1
    finally:
        dist.destroy_process_group()
