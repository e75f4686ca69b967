"""worker.tokenizing and worker.activations: predict's tokenization and activation without transformers or
torch give the same ids and (to one float32 step) the same scores."""

from __future__ import annotations

import random

import numpy as np
import pytest

from devkit.models import sample_text
from worker.activations import identity, sigmoid
from worker.tokenizing import PairTokenizer, save_pair_settings


def pairs_for(seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    query = sample_text(rng, 8)
    return [(query, sample_text(rng, n)) for n in (1, 5, 30, 120, 700)] + [(sample_text(rng, 600), "short text")]


@pytest.mark.model
@pytest.mark.parametrize("max_length", [None, 64])
def test_pair_tokenizer_gives_predicts_ids(conditioned_model, tmp_path, max_length):
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(conditioned_model), device="cpu", max_length=max_length)
    save_pair_settings(ce.tokenizer, tmp_path)
    ours = PairTokenizer(tmp_path, ["input_ids", "attention_mask"])
    assert ours.model_max_length == ce.max_seq_length
    for side in ("right", "left"):
        pairs = pairs_for(len(side))
        ce.tokenizer.truncation_side = ours.truncation_side = side
        want, got = ce.preprocess(pairs), ours.encode(pairs)
        for name in ("input_ids", "attention_mask"):
            assert got[name].dtype == np.int64 and got[name].tolist() == want[name].tolist(), (side, name)
        counted = ours(pairs, truncation=False, padding=False)["input_ids"]
        assert [len(r) for r in counted] == [len(r) for r in ce.tokenizer(pairs, truncation=False)["input_ids"]]
        assert max(len(r) for r in counted) > ce.max_seq_length  # some pairs were over the window
    ce.tokenizer.truncation_side = "right"


@pytest.mark.model
def test_a_max_length_override_applies(conditioned_model, tmp_path):
    from sentence_transformers import CrossEncoder

    save_pair_settings(CrossEncoder(str(conditioned_model), device="cpu").tokenizer, tmp_path)
    ours = PairTokenizer(tmp_path, ["input_ids", "attention_mask"], max_length=16)
    assert ours.encode(pairs_for(3))["input_ids"].shape[1] == 16


def test_numpy_sigmoid_is_within_one_float32_step_of_torchs():
    import torch

    x = np.concatenate([np.linspace(-30, 30, 200_001, dtype=np.float32),
                        np.array([-1000, -104, -88, 88, 1000], dtype=np.float32)])
    ours = sigmoid(x)
    theirs = torch.nn.Sigmoid()(torch.from_numpy(x)).numpy()
    assert ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-7
    assert ours[-5] == 0.0 and ours[-1] == 1.0
    assert identity(x).dtype == np.float32 and np.array_equal(identity(x), x)
