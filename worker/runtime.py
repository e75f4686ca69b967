"""What a backend hands the scorer: a model that tokenizes pairs and turns them into logits.

Every backend (worker/backends/) loads one `Runtime`; `CrossEncoderScorer` does the rest (batches,
activation, order) the same way for all of them. Everything crosses this boundary as numpy arrays, so
that the scorer needs no torch: the exported backends run without importing it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

Pairs = Sequence[tuple[str, str]]


class ScorerError(RuntimeError):
    """The scorer cannot start; the message says what to change."""


class Runtime(Protocol):
    num_labels: int
    activation: Callable[[np.ndarray], np.ndarray]
    """Applied to float32 logits as CrossEncoder.predict applies its activation_fn (sigmoid for one label)."""
    max_length: int
    padding_side: str
    """Which end of a row holds the padding ("left" or "right"), so that a batch can cut it off."""
    tokenizer: Any
    """What `tokenize` uses (worker/tokenizing.py): its `truncation_side` chooses which end of a
    too-long pair is cut, and called without truncation it counts a pair's tokens."""

    @property
    def info(self) -> dict[str, Any]:
        """What this runtime adds to the scorer's info (e.g. the exported file it runs)."""
        ...

    def tokenize(self, pairs: list[tuple[str, str]]) -> dict[str, np.ndarray]:
        """int64 arrays for the whole request, padded to its longest pair, exactly as predict tokenizes."""
        ...

    def forward(self, features: dict[str, np.ndarray]) -> np.ndarray:
        """float32 logits, one row per pair, for arrays cut from `tokenize`'s output (lower precisions
        are upcast here, as predict upcasts them before its activation)."""
        ...
