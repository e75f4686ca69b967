"""CrossEncoder activations in numpy, for the runtimes that run without torch.

predict applies its activation_fn (a torch module, recorded by name at export) to float32 logits.
These compute the same function in float64 and round once to float32, so a score is the correctly
rounded value, within one float32 step of torch's (tests/test_activations.py: <= 1e-7).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def sigmoid(logits: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x < -709: the score is then 0, as in torch
        return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def identity(logits: np.ndarray) -> np.ndarray:
    return np.asarray(logits, dtype=np.float32)


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "torch.nn.modules.activation.Sigmoid": sigmoid,
    "torch.nn.modules.linear.Identity": identity,
}
"""activation_fn class, as sentence-transformers names it (util.fullname) -> the same in numpy."""
