import itertools

from training.streams import ShuffledStream, StreamSampler


class Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def test_sampler_shards_ranks_and_resumes():
    assert list(itertools.islice(StreamSampler(), 4)) == [0, 1, 2, 3]
    assert list(itertools.islice(StreamSampler(rank=1, world_size=2), 3)) == [1, 3, 5]
    assert list(itertools.islice(StreamSampler(start=2, rank=0, world_size=2), 2)) == [4, 6]


def test_shuffled_stream_is_a_seeded_permutation_per_epoch():
    stream = ShuffledStream(Numbers(5), seed=3)
    epoch0 = [stream[p] for p in range(5)]
    epoch1 = [stream[p] for p in range(5, 10)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(5))
    again = ShuffledStream(Numbers(5), seed=3)
    assert [again[p] for p in range(7, 10)] == epoch1[2:], "resuming mid-epoch continues the same order"
    other = ShuffledStream(Numbers(5), seed=4)
    assert [other[p] for p in range(20)] != [stream[p] for p in range(20)]
