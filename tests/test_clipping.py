"""Long texts cut before tokenizing: the same model inputs as tokenizing them whole."""

import random

import numpy as np
import pytest

from devkit.models import sample_text
from shared.settings import Settings
from worker.clipping import MARGIN, TextClipper, cut_text


def test_cut_text_ends_at_whitespace_in_its_second_half():
    text = "word " * 100
    assert cut_text(text, 42, "right") == "word " * 7 + "word"
    assert cut_text(text, 42, "left") == " word" * 8 + " "
    assert cut_text("x" * 100, 42, "right") == "x" * 42  # no whitespace: cut at the limit
    assert cut_text("x" * 100, 42, "left") == "x" * 42


@pytest.fixture(scope="module")
def scorer(tiny_model):
    from worker.scorer import CrossEncoderScorer

    return CrossEncoderScorer(Settings(model=str(tiny_model), backend="torch", precision="fp32", num_threads=1))


@pytest.mark.model
@pytest.mark.parametrize("side", ["right", "left"])
def test_clipped_pairs_give_the_inputs_of_whole_ones(scorer, side):
    rng = random.Random(11)
    query = sample_text(rng, 8)
    texts = [sample_text(rng, 20_000),                      # ~100k characters: cut
             sample_text(rng, 30),                          # short: as it is
             "y" * 100_000,                                 # no whitespace, few long tokens: cut only if it keeps enough
             sample_text(rng, 1_500)]                       # just over the limit
    pairs = [(query, t) for t in texts]
    clipper = scorer.clipper
    clipped = clipper.clip(pairs, side)
    assert len(clipped[0][1]) <= clipper.limit < len(texts[0]) and clipped[1][1] == texts[1]
    runtime = scorer.runtime
    before = runtime.tokenizer.truncation_side
    runtime.tokenizer.truncation_side = side
    try:
        whole, cut = runtime.tokenize(pairs), runtime.tokenize(clipped)
    finally:
        runtime.tokenizer.truncation_side = before
    for key in whole:
        np.testing.assert_array_equal(np.asarray(cut[key]), np.asarray(whole[key]))


@pytest.mark.model
def test_a_cut_is_kept_only_with_tokens_to_spare(scorer):
    clipper = TextClipper(scorer.runtime.tokenizer, scorer.runtime.max_length)
    text = "z" * (clipper.limit + 10)  # one run of a character: few tokens for its length
    tokens = len(clipper.counter.encode(cut_text(text, clipper.limit, "right"), add_special_tokens=False).ids)
    (kept,) = clipper.clip([("q", text)])
    assert kept[1] == (text if tokens < clipper.max_length + MARGIN else cut_text(text, clipper.limit, "right"))
