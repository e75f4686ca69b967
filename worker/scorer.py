"""Scorers: what turns (query, sentence) pairs into float32 scores.

`load_scorer(settings)` picks one by RERANKER_BACKEND. The real one wraps a
sentence-transformers CrossEncoder and returns exactly `predict`'s scores. The
stub is for tests and demos only and is never the default.
"""

from __future__ import annotations

import os
import re
import time
from typing import Protocol, Sequence

import numpy as np

from shared.settings import Settings

Pairs = Sequence[tuple[str, str]]


class ScorerError(RuntimeError):
    """The scorer cannot start; the message says what to change."""


class Scorer(Protocol):
    info: dict

    def score(self, pairs: Pairs) -> np.ndarray: ...


class CrossEncoderScorer:
    """CrossEncoder.predict with its default activation (sigmoid for one label)."""

    def __init__(self, settings: Settings) -> None:
        if settings.backend != "torch" or settings.precision != "fp32":
            raise ScorerError(
                f"RERANKER_BACKEND={settings.backend} with RERANKER_PRECISION={settings.precision} is not "
                "supported by this build; use RERANKER_BACKEND=torch with RERANKER_PRECISION=fp32"
            )
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(settings.num_threads)
        try:
            torch.set_num_interop_threads(1)  # one job at a time: inter-op threads would only oversubscribe
        except RuntimeError:
            pass  # already set in this process
        kwargs = {"device": "cpu"}
        if settings.max_length is not None:
            kwargs["max_length"] = settings.max_length
        try:
            self.model = CrossEncoder(settings.model, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any load failure gets the same advice
            local = os.path.isdir(settings.model)
            hint = ("check that the directory holds a saved CrossEncoder (config.json, weights, tokenizer)"
                    if local else
                    "if the Hugging Face hub is unreachable, download the model elsewhere and point "
                    "RERANKER_MODEL at its local directory")
            raise ScorerError(f"cannot load model {settings.model!r}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}; {hint}") from exc
        self.model.eval()
        self.batch_size = settings.batch_size
        self.info = {
            "model": settings.model,
            "backend": "torch",
            "precision": "fp32",
            "threads": torch.get_num_threads(),
            "max_length": self.model.max_length,
        }

    def score(self, pairs: Pairs) -> np.ndarray:
        scores = self.model.predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False,
                                    convert_to_numpy=True)
        return np.asarray(scores, dtype=np.float32).reshape(len(pairs))


_WORD = re.compile(r"\w+")


class StubScorer:
    """Test/demo backend: the share of the query's words found in the sentence.

    Deterministic, so ordering is checkable; `delay_ms` per pair simulates compute.
    """

    def __init__(self, settings: Settings) -> None:
        self.delay = settings.stub_delay_ms / 1000.0
        self.info = {"model": "stub", "backend": "stub", "precision": "none", "threads": 1}

    def score(self, pairs: Pairs) -> np.ndarray:
        if self.delay:
            time.sleep(self.delay * len(pairs))
        return np.array([stub_score(q, s) for q, s in pairs], dtype=np.float32)


def stub_score(query: str, sentence: str) -> float:
    q = set(_WORD.findall(query.lower()))
    s = set(_WORD.findall(sentence.lower()))
    return len(q & s) / len(q) if q else 0.0


def load_scorer(settings: Settings) -> Scorer:
    if settings.backend == "stub":
        return StubScorer(settings)
    return CrossEncoderScorer(settings)
