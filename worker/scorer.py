"""Scorers: what turns (query, sentence) pairs into float32 scores.

`load_scorer(settings)` picks one by RERANKER_BACKEND and RERANKER_PRECISION; where they leave the choice
open (auto, exact, fast) worker/selection.py makes it.

- fp32, in any backend, is exact: its scores equal `CrossEncoder.predict`'s default output (sigmoid for
  one label) within float noise (< 1e-5), in the same order. RERANKER_PRECISION=exact (the default) runs
  the fastest fp32 backend installed.
- torch bf16 / int8, onnx int8 and openvino bf16 / int8 are the fast modes; their drift and speed are
  measured by `python -m benchmarks.drift` and written up in docs/precision.md. onnx and openvino are
  optional extras (`pip install '.[onnx]'`, `'.[openvino]'`). They run a graph exported once from the
  torch model and cached (worker/backends/export.py), and need no torch once it is there.
- The stub is for tests and demos only and is never the default (worker/stub.py).

Every mode is a runtime (worker/backends/) under one batching scheme (`CrossEncoderScorer.score`): the
request is tokenized once, pairs are sorted by token length and cut into batches (worker/batching.py),
with at most RERANKER_BATCH_SIZE pairs and RERANKER_BATCH_TOKENS padded tokens (pairs x longest pair) a
batch; the model runs, the activation is applied as predict does, and scores go back in request order.
Anything that can be done once (eval mode, activation, sessions, thread settings) is done at start.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Protocol, Sequence

import numpy as np

from shared.settings import Settings

from .backends import check_mode, runtime_loader
from .batching import plan_batches
from .clipping import TextClipper
from .runtime import Pairs, ScorerError
from .selection import choose_scorer, ruled_mode
from .stub import StubScorer


class Scorer(Protocol):
    info: dict

    def score(self, pairs: Pairs, raw: Sequence[bool] | None = None, truncation_side: str = "right") -> np.ndarray:
        """Scores in pair order: the activation's output, or the logit where `raw` says so; a pair
        over the model's window loses tokens at its `truncation_side` end."""
        ...

    def too_long(self, pairs: Pairs) -> list[bool]:
        """Which pairs exceed the model's window (and would be truncated)."""
        ...


class CrossEncoderScorer:
    """A CrossEncoder's scores (default activation: sigmoid for one label), in any backend and precision."""

    def __init__(self, settings: Settings) -> None:
        settings = ruled_mode(settings)  # auto/exact/fast settled by rule; load_scorer measures instead
        backend, precision = settings.backend, settings.precision
        check_mode(backend, precision)
        self.batch_size = settings.batch_size
        self.batch_tokens = settings.batch_tokens
        if self.batch_tokens < 1:
            raise ScorerError(f"RERANKER_BATCH_TOKENS={self.batch_tokens} must be >= 1")
        self._lock = threading.Lock()  # one forward pass at a time: sessions and infer requests are not re-entrant
        self.tokens = 0  # tokens scored so far, specials included, after truncation: a job's count is the difference
        self.runtime = runtime = runtime_loader(backend)(settings)
        if runtime.num_labels != 1:
            raise ScorerError(f"RERANKER_MODEL={settings.model} has {runtime.num_labels} labels; "
                              "a reranker needs a one-label cross-encoder")
        self.clipper = TextClipper(runtime.tokenizer, runtime.max_length)
        self.info = {
            "model": settings.model,
            "backend": backend,
            "precision": precision,
            "threads": settings.num_threads,
            "max_length": runtime.max_length,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            **runtime.info,
        }

    def score(self, pairs: Pairs, raw: Sequence[bool] | None = None, truncation_side: str = "right") -> np.ndarray:
        pairs = [(q, s) for q, s in pairs]
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        runtime = self.runtime
        scores = np.empty(len(pairs), dtype=np.float32)
        with self._lock, _truncating(runtime.tokenizer, truncation_side):
            features = runtime.tokenize(self.clipper.clip(pairs, truncation_side))
            mask = features["attention_mask"]
            lengths = mask.sum(1).tolist()
            self.tokens += int(sum(lengths))
            width = mask.shape[1]
            for batch in plan_batches(lengths, self.batch_size, self.batch_tokens):
                longest = int(max(lengths[i] for i in batch))
                cols = slice(0, longest) if runtime.padding_side != "left" else slice(width - longest, width)
                index = np.asarray(batch)
                sub = {k: (v[index, cols] if getattr(v, "ndim", 0) == 2 else v)
                       for k, v in features.items()}  # rows of this batch, padded to its longest pair
                logits = runtime.forward(sub)  # float32 (the runtime upcasts bf16, as predict does)
                out = runtime.activation(logits)
                if raw is not None:
                    keep = np.asarray([raw[i] for i in batch]).reshape(-1, *([1] * (logits.ndim - 1)))
                    out = np.where(keep, logits, out)  # as predict(activation_fn=Identity) for those pairs
                scores[batch] = out.reshape(len(batch))
        return scores

    def too_long(self, pairs: Pairs) -> list[bool]:
        tokenizer = self.runtime.tokenizer
        with self._lock:
            ids = tokenizer([(q, s) for q, s in pairs], truncation=False, padding=False)["input_ids"]
        return [len(row) > self.runtime.max_length for row in ids]


@contextlib.contextmanager
def _truncating(tokenizer, side: str) -> Iterator[None]:
    """The tokenizer cuts too-long pairs at `side` for the duration (under the scorer's lock)."""
    before = tokenizer.truncation_side
    tokenizer.truncation_side = side
    try:
        yield
    finally:
        tokenizer.truncation_side = before


def load_scorer(settings: Settings) -> Scorer:
    if settings.backend == "stub":
        return StubScorer(settings)
    return choose_scorer(settings, CrossEncoderScorer)
