"""Seeded workloads: W5, W30 and W240 (one query of ~8 words; 5, 30 or 240 sentences of 10-40 words).

Every request of a workload is different (seeded by workload, seed and index), so no cache helps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from devkit.models import sample_text

WORKLOADS = {"W5": 5, "W30": 30, "W240": 240}
QUERY_WORDS = (6, 10)      # ~8 words
SENTENCE_WORDS = (10, 40)


@dataclass(frozen=True)
class RerankRequest:
    query: str
    sentences: list[str]

    @property
    def pairs(self) -> int:
        return len(self.sentences)

    def body(self) -> dict:
        return {"query": self.query, "sentences": self.sentences, "ids": list(range(len(self.sentences)))}


def make_requests(workload: str, count: int, seed: int = 0) -> list[RerankRequest]:
    n = WORKLOADS[workload]
    out = []
    for i in range(count):
        rng = random.Random(f"{workload}/{seed}/{i}")
        query = sample_text(rng, rng.randint(*QUERY_WORDS))
        sentences = [sample_text(rng, rng.randint(*SENTENCE_WORDS)) for _ in range(n)]
        out.append(RerankRequest(query, sentences))
    return out


def token_stats(tokenizer, requests: list[RerankRequest], batch_size: int = 32, max_length: int = 512) -> dict:
    """Token counts per request, averaged over `requests`.

    - text_tokens: the request's texts tokenized once each (query once), plus the 3 special
      tokens of each pair: the size of the request as a reader would count it.
    - pair_tokens: what the model reads: every (query, sentence) pair with its special tokens.
    - padded_tokens: pair_tokens after CrossEncoder.predict's padding (pairs sorted by length,
      batches of `batch_size`, each padded to its longest pair).
    """
    text, pair, padded, words, lengths = 0, 0, 0, 0, []
    for req in requests:
        q = len(tokenizer(req.query, add_special_tokens=False)["input_ids"])
        s = [len(tokenizer(x, add_special_tokens=False)["input_ids"]) for x in req.sentences]
        ls = [min(max_length, q + x + 3) for x in s]
        text += q + sum(s) + 3 * len(s)
        pair += sum(ls)
        words += len(req.query.split()) + sum(len(x.split()) for x in req.sentences)
        srt = sorted(ls)
        for i in range(0, len(srt), batch_size):
            chunk = srt[i:i + batch_size]
            padded += max(chunk) * len(chunk)
        lengths.append(ls)
    n = len(requests)
    return {
        "requests_sampled": n,
        "pairs": len(requests[0].sentences),
        "words": round(words / n, 1),
        "text_tokens": round(text / n, 1),
        "tokens_per_word": round((text - 3 * sum(len(r.sentences) for r in requests)) / words, 3),
        "pair_tokens": round(pair / n, 1),
        "padded_tokens": round(padded / n, 1),
        "pair_lengths": lengths,  # per request, for FLOP counts (dropped from the JSON)
    }
