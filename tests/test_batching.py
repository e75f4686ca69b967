"""worker.batching.plan_batches: every pair once, within the limits, cut only where padding saved pays."""

from __future__ import annotations

import itertools
import random

import pytest

from worker.batching import SINGLE_PENALTY, plan_batches


@pytest.mark.parametrize("batch_size,batch_tokens,overhead", [(32, 8192, 96), (4, 8192, 96), (32, 300, 0),
                                                              (1, 1, 96), (64, 2048, 10**9)])
def test_batches_cover_each_pair_once_within_limits(batch_size, batch_tokens, overhead):
    rng = random.Random(batch_size + batch_tokens)
    for n in (0, 1, 2, 7, 30, 65):
        lengths = [rng.randint(3, 512) for _ in range(n)]
        batches = plan_batches(lengths, batch_size, batch_tokens, overhead)
        assert sorted(i for b in batches for i in b) == list(range(n))
        flat = [lengths[i] for b in batches for i in b]
        assert flat == sorted(flat, reverse=True)  # longest first: each batch is padded to its first pair
        for b in batches:
            assert len(b) <= batch_size
            assert len(b) == 1 or len(b) * lengths[b[0]] <= batch_tokens


def test_batches_cut_padding_only_where_it_pays():
    lengths = [100] * 10 + [20] * 10
    assert len(plan_batches(lengths, 32, 8192, 96)) == 2  # 800 padded tokens saved > 96
    assert len(plan_batches(lengths, 32, 8192, 10**6)) == 1  # a pass costing more than the padding
    assert [len(b) for b in plan_batches([50, 49, 48, 47], 32, 8192, 96)] == [4]


def test_ties_keep_request_order():
    assert plan_batches([5, 9, 5, 9], 32, 8192, 10**6) == [[1, 3, 0, 2]]
    lengths = [10 + i % 3 for i in range(60)]
    assert plan_batches(lengths, 64, 8192, 10**6) == [sorted(range(60), key=lambda i: -lengths[i])]


def test_a_pair_over_the_token_budget_runs_alone():
    assert plan_batches([400, 100, 100, 100], 32, 300, 0) == [[0], [1, 2, 3]]


def test_batches_of_one_only_as_a_last_resort():
    # Apart, the two would compute 120 padded tokens, together 200; but a pair alone rounds differently
    # from a batched one, so they stay together while the budget allows it.
    assert plan_batches([100, 20], 32, 8192, 0) == [[0, 1]]
    # Over budget together (2 x 100 > 150): then each runs alone.
    assert plan_batches([100, 20], 32, 150, 0) == [[0], [1]]
    # A request of one pair, or batches of one pair by setting, are not penalised.
    assert plan_batches([7], 32, 8192) == [[0]]
    assert plan_batches([3, 9, 5], 1, 8192) == [[1], [2], [0]]


def brute_force_cost(lengths, batch_size, batch_tokens, overhead):
    """The least cost over every cut of the length-sorted run: padded tokens + overhead per batch, batches
    of one penalised where the budget would have let the pair share a batch (the planner's objective)."""
    ls = sorted((max(length, 1) for length in lengths), reverse=True)
    n = len(ls)
    best = None
    for cuts in itertools.product((False, True), repeat=max(n - 1, 0)):
        bounds = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [n]
        cost = 0
        for lo, hi in zip(bounds, bounds[1:]):
            size = hi - lo
            if size > batch_size or (size > 1 and size * ls[lo] > batch_tokens):
                break
            cost += overhead + size * ls[lo]
            if size == 1 and n > 1 and batch_size > 1 and 2 * ls[lo] <= batch_tokens:
                cost += SINGLE_PENALTY
        else:
            best = cost if best is None else min(best, cost)
    return best


def plan_cost(lengths, batches, batch_tokens, batch_size, overhead):
    cost = 0
    for b in batches:
        first = max(lengths[b[0]], 1)
        cost += overhead + len(b) * first
        if len(b) == 1 and len(lengths) > 1 and batch_size > 1 and 2 * first <= batch_tokens:
            cost += SINGLE_PENALTY
    return cost


@pytest.mark.parametrize("batch_size,batch_tokens,overhead", [(32, 8192, 32), (3, 8192, 32), (32, 400, 0),
                                                              (4, 250, 16), (1, 8192, 32), (32, 8192, 500)])
def test_plan_is_the_cheapest_cut(batch_size, batch_tokens, overhead):
    rng = random.Random(batch_size * 7 + batch_tokens + overhead)
    for n in range(1, 10):
        for _ in range(4):
            lengths = [rng.choice((0, rng.randint(1, 300))) if rng.random() < 0.1 else rng.randint(1, 300)
                       for _ in range(n)]
            batches = plan_batches(lengths, batch_size, batch_tokens, overhead)
            assert plan_cost(lengths, batches, batch_tokens, batch_size, overhead) == \
                brute_force_cost(lengths, batch_size, batch_tokens, overhead), (lengths, batches)
