"""Build random-weight CrossEncoder models locally (no model hub needed).

- `mxbai-base`: exactly mixedbread-ai/mxbai-rerank-base-v1's architecture
  (DebertaV2ForSequenceClassification, hidden 768, 12 layers, 12 heads,
  intermediate 3072, vocab 128100, relative attention, position buckets 256,
  p2c|c2p, 512 positions, one label). Speed does not depend on the weights.
- `tiny`: the same family, a few hundred KB, for tests.

Both get a DeBERTa-v2 (SentencePiece Unigram) tokenizer over a seeded
English-like vocabulary with Zipf word frequencies: frequent words are single
pieces, rare ones split into syllables, ~1.3 tokens per word of `sample_text`,
as the real DeBERTa-v3 tokenizer gives on English (a W30 request, query once,
is then ~1,075 tokens). The result is a directory that
`CrossEncoder(path)` loads with the real loading code.

    python -m devkit.models mxbai-base benchmarks/.models/mxbai-base
    python -m devkit.models tiny DIR
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ARCHS = {
    "mxbai-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       vocab_size=128100),
    # initializer_range 0.2: features that vary with the input, so the calibrated head needs little
    # gain and float noise (thread count, batch shape) stays ~1e-7 in scores, as with trained weights.
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 vocab_size=16000, initializer_range=0.2),
}
COMMON = dict(
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
    max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
    pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0, num_labels=1,
)
SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
# Bump when the tokenizer or the weights change, so that cached models are rebuilt.
BUILD_VERSION = 3

ONSETS = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch", "sh"]
VOWELS = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
CODAS = ["", "n", "r", "s", "t", "l", "nd", "ng", "ck"]
SYLLABLES = [o + v + c for o in ONSETS for v in VOWELS for c in CODAS]

VOCAB_WORDS = 20000   # distinct words in the sampled "language"
WHOLE_WORDS = 2300    # the most frequent ones are single tokens; the rest split into syllables
ZIPF_S = 1.0          # word frequency ~ 1 / rank**s, as in English


def vocabulary(n: int = VOCAB_WORDS, seed: int = 0) -> list[str]:
    """A seeded list of pronounceable English-like words, most frequent first.

    Shorter words come first, as in English, where frequent words are short.
    """
    rng = random.Random(seed)
    words: dict[str, int] = {}
    while len(words) < n:
        k = rng.choice([1, 1, 2, 2, 2, 3, 3, 4])
        words.setdefault("".join(rng.choice(SYLLABLES) for _ in range(k)), len(words))
    # rank: by syllable-ish length, ties in the (seeded) order of generation
    return sorted(words, key=lambda w: (len(w) // 3, words[w]))


_CUM: dict[int, list[float]] = {}


def _zipf_cum(n: int) -> list[float]:
    if n not in _CUM:
        total, cum = 0.0, []
        for r in range(n):
            total += 1.0 / (r + 1) ** ZIPF_S
            cum.append(total)
        _CUM[n] = cum
    return _CUM[n]


def build_tokenizer(path: Path, vocab_size: int, seed: int = 0):
    """A DeBERTa-v2 (SentencePiece Unigram) tokenizer whose pieces are set, not trained.

    The WHOLE_WORDS most frequent words are single pieces; every other word splits into its
    syllables (all syllables are pieces, with and without the word-start mark), so that sampled
    text gives ~1.3 tokens per word, as the real DeBERTa-v3 tokenizer does on English.
    """
    import math

    from transformers import DebertaV2Tokenizer

    words = vocabulary(seed=seed)
    cum = _zipf_cum(len(words))
    pieces: list[tuple[str, float]] = [(t, 0.0) for t in SPECIAL]
    seen = set(SPECIAL)

    def add(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            pieces.append((piece, score))

    budget = min(vocab_size, 128100) - len(SPECIAL)
    for rank, word in enumerate(words[:min(WHOLE_WORDS, budget - 3000)]):
        add("\u2581" + word, math.log((1.0 / (rank + 1) ** ZIPF_S) / cum[-1]) - 2.0)  # >= -13
    for syllable in SYLLABLES:
        add("\u2581" + syllable, -20.0)
        add(syllable, -20.5)
    for ch in "\u2581abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-":
        add(ch, -30.0)
    tokenizer = DebertaV2Tokenizer(vocab=pieces, unk_id=SPECIAL.index("[UNK]"), model_max_length=512)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_model(path: str | Path, arch: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight cross-encoder of `arch` to `path` (skipped if already there)."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    path = Path(path)
    marker = path / "reranker-build.json"
    spec = {"arch": arch, "seed": seed, "version": BUILD_VERSION}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, ARCHS[arch]["vocab_size"], seed)
    torch.manual_seed(seed)
    config = DebertaV2Config(**{**COMMON, **ARCHS[arch]})
    model = DebertaV2ForSequenceClassification(config).eval()
    calibrate(model, tokenizer, seed)
    model.save_pretrained(str(path))
    marker.write_text(json.dumps(spec))
    return path


def calibrate(model, tokenizer, seed: int, n: int = 64) -> None:
    """Point the random classifier along the direction in which pooled features vary most.

    A random head gives nearly the same logit for every input (all scores
    ~0.43); this one gives logits of mean 0 and variance 1 on sample pairs,
    so that scores spread over (0, 1) and orderings differ between inputs.
    """
    import torch

    rng = random.Random(seed + 1)
    words = vocabulary(seed=seed)
    pairs = [(sample_text(rng, 8, words), sample_text(rng, rng.randint(10, 40), words)) for _ in range(n)]
    features = []
    hook = model.classifier.register_forward_hook(lambda mod, inp, out: features.append(inp[0].detach()))
    with torch.no_grad():
        batch = tokenizer([q for q, _ in pairs], [s for _, s in pairs], padding=True, return_tensors="pt")
        model(**batch)
    hook.remove()
    x = features[0].double()
    mean = x.mean(0)
    _, _, v = torch.linalg.svd(x - mean, full_matrices=False)
    direction = v[0]
    std = ((x - mean) @ direction).std()
    with torch.no_grad():
        model.classifier.weight.copy_((direction / std).to(model.classifier.weight.dtype).unsqueeze(0))
        model.classifier.bias.fill_(float(-(mean @ direction) / std))


_DEFAULT_WORDS: list[str] = []


def sample_text(rng: random.Random, n_words: int, words: list[str] | None = None) -> str:
    """`n_words` words drawn with Zipf frequencies (seeded by `rng`): ~1.3 tokens per word."""
    if words is None:
        if not _DEFAULT_WORDS:
            _DEFAULT_WORDS.extend(vocabulary())
        words = _DEFAULT_WORDS
    return " ".join(rng.choices(words, cum_weights=_zipf_cum(len(words)), k=n_words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_model(args.path, args.arch, args.seed))


if __name__ == "__main__":
    main()
