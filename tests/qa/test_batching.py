"""Training batches grouped by length inside small random buckets; evaluation sorted and put back in order."""
from __future__ import annotations

import random

import torch

from longctx.qa.batching import BucketedLengthSampler, bucketed_length_order, length_sorted


def test_order_is_a_permutation_with_less_padding_than_random():
    rng = random.Random(0)
    lengths = [rng.randint(40, 384) for _ in range(1000)]
    order = bucketed_length_order(lengths, 16, 8, torch.Generator().manual_seed(1))
    assert sorted(order) == list(range(1000))

    def padded(o):
        return sum(max(lengths[i] for i in o[k:k + 16]) * len(o[k:k + 16]) for k in range(0, len(o), 16))

    shuffled = torch.randperm(1000, generator=torch.Generator().manual_seed(1)).tolist()
    assert padded(order) < 0.8 * padded(shuffled)


def test_equal_length_groups_are_not_batched_together():
    """Five questions per paragraph share one window length (SQuAD); a batch should still mix paragraphs."""
    lengths = [100 + p for p in range(200) for _ in range(5)]  # 200 paragraphs x 5 questions
    order = bucketed_length_order(lengths, 16, 8, torch.Generator().manual_seed(0))
    paragraphs_per_batch = [len({lengths[i] for i in order[k:k + 16]}) for k in range(0, 992, 16)]
    # transformers' LengthGroupedSampler (50-batch mega-batches) gives ~4 paragraphs per batch here.
    assert sum(paragraphs_per_batch) / len(paragraphs_per_batch) >= 8


def test_batches_come_in_random_length_order():
    lengths = list(range(1024))
    order = bucketed_length_order(lengths, 16, 8, torch.Generator().manual_seed(0))
    firsts = [lengths[order[k]] for k in range(0, 1024, 16)]
    # no long->short (or short->long) sweep: about half the consecutive batch pairs go up
    ups = sum(b > a for a, b in zip(firsts, firsts[1:]))
    assert 0.3 < ups / (len(firsts) - 1) < 0.7


def test_sampler_is_seeded_per_epoch():
    lengths = list(range(300))
    s = BucketedLengthSampler(lengths, 16, 4, seed=3)
    first = list(s)
    assert list(s) == first and len(s) == 300
    s.set_epoch(1)
    assert list(s) != first and sorted(s) == sorted(first)


def test_length_sorted_round_trip():
    lengths = [5, 9, 1, 9, 3]
    order, inverse = length_sorted(lengths)
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    rows = [lengths[i] for i in order]
    assert [rows[j] for j in inverse] == lengths
