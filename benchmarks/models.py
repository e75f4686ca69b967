"""Build random-weight CrossEncoder models locally (no model hub needed).

- `mxbai-base`: exactly mixedbread-ai/mxbai-rerank-base-v1's architecture
  (DebertaV2ForSequenceClassification, hidden 768, 12 layers, 12 heads,
  intermediate 3072, vocab 128100, relative attention, position buckets 256,
  p2c|c2p, 512 positions, one label). Speed does not depend on the weights.
- `tiny`: the same family, a few hundred KB, for tests.

Both get a DeBERTa-v2 (SentencePiece Unigram) tokenizer trained here on a
seeded English-like vocabulary, so that one word is about one token, as with
the real model on English text. The result is a directory that
`CrossEncoder(path)` loads with the real loading code.

    python -m benchmarks.models mxbai-base benchmarks/.models/mxbai-base
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ARCHS = {
    "mxbai-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       vocab_size=128100),
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 vocab_size=16000),
}
COMMON = dict(
    hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, max_position_embeddings=512,
    type_vocab_size=0, initializer_range=0.02, layer_norm_eps=1e-7, relative_attention=True,
    max_relative_positions=-1, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
    pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=0, num_labels=1,
)
SPECIAL = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def vocabulary(n: int = 3000, seed: int = 0) -> list[str]:
    """A seeded list of pronounceable English-like words."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr", "pl", "ch", "sh"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    codas = ["", "n", "r", "s", "t", "l", "nd", "ng", "ck"]
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas)
                          for _ in range(rng.choice([1, 1, 1, 2, 2]))))
    return sorted(words)


def build_tokenizer(path: Path, vocab_size: int, seed: int = 0):
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import DebertaV2Tokenizer

    rng = random.Random(seed)
    words = vocabulary(seed=seed)
    corpus = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(3000)]
    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(corpus, vocab_size=min(vocab_size, 16000), special_tokens=SPECIAL,
                                unk_token="[UNK]", show_progress=False)
    model = json.loads(trainer.to_str())["model"]
    tokenizer = DebertaV2Tokenizer(vocab=[tuple(v) for v in model["vocab"]], unk_id=model["unk_id"],
                                   model_max_length=512)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_model(path: str | Path, arch: str = "tiny", seed: int = 0) -> Path:
    """Write a random-weight cross-encoder of `arch` to `path` (skipped if already there)."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    path = Path(path)
    marker = path / "reranker-build.json"
    spec = {"arch": arch, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return path
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(path, ARCHS[arch]["vocab_size"], seed)
    torch.manual_seed(seed)
    config = DebertaV2Config(**COMMON, **ARCHS[arch])
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


def sample_text(rng: random.Random, n_words: int, words: list[str] | None = None) -> str:
    words = words or vocabulary()
    return " ".join(rng.choice(words) for _ in range(n_words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=sorted(ARCHS))
    parser.add_argument("path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_model(args.path, args.arch, args.seed))


if __name__ == "__main__":
    main()
