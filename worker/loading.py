"""Loading the CrossEncoder, and the advice given when it cannot be loaded."""

from __future__ import annotations

import os
from typing import Any

from .runtime import ScorerError


def load_failure(model: str, exc: BaseException) -> ScorerError:
    """One line: what failed to load, why, and what to check (a local directory, or the hub)."""
    local = os.path.isdir(model)
    hint = ("check that the directory holds a saved CrossEncoder (config.json, weights, tokenizer)"
            if local else
            "if the Hugging Face hub is unreachable, download the model elsewhere and point "
            "RERANKER_MODEL at its local directory")
    first = str(exc).splitlines()[0] if str(exc) else ""
    return ScorerError(f"cannot load model {model!r}: {type(exc).__name__}: {first}; {hint}")


def load_cross_encoder(model: str, max_length: int | None, **kwargs: Any):
    """A CrossEncoder on CPU, in eval mode; ScorerError with advice if it cannot load."""
    from sentence_transformers import CrossEncoder

    if max_length is not None:
        kwargs["max_length"] = max_length
    try:
        ce = CrossEncoder(model, device="cpu", **kwargs)
    except Exception as exc:  # noqa: BLE001 - any load failure gets the same advice
        raise load_failure(model, exc) from exc
    ce.eval()
    return ce
