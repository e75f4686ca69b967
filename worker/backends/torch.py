"""RERANKER_BACKEND=torch: the CrossEncoder itself, in fp32 (exact), bf16 or dynamic int8.

Tokenization and the forward pass are predict's own (`preprocess`, `__call__`), so fp32 scores equal
predict's. DeBERTa-v2's relative-position projections are computed once (worker/relpos.py), bit-identically.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..loading import load_cross_encoder
from ..relpos import memoize_relative_positions

if TYPE_CHECKING:
    from shared.settings import Settings


class TorchRuntime:
    def __init__(self, model: str, precision: str, max_length: int | None) -> None:
        kwargs: dict[str, Any] = {}
        if precision == "bf16":
            kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
        ce = load_cross_encoder(model, max_length, **kwargs)
        if precision == "int8":
            quantize_int8(ce)
        self.memos = memoize_relative_positions(ce[0].auto_model)  # exact: constants computed once
        self.model = ce
        self.tokenizer = ce.tokenizer
        self.num_labels = ce.num_labels
        self.activation = ce.activation_fn
        self.padding_side = getattr(ce[0].tokenizer, "padding_side", "right")
        self.max_length = ce.max_seq_length
        self.info: dict[str, Any] = {}

    def tokenize(self, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        return self.model.preprocess(pairs)  # exactly predict's tokenization, padded to the request's longest

    def forward(self, features: dict[str, Any]) -> torch.Tensor:
        return self.model(features)["scores"]  # through __call__, as predict does


def load(settings: Settings) -> TorchRuntime:
    return TorchRuntime(settings.model, settings.precision, settings.max_length)


def quantize_int8(ce) -> None:
    """Dynamic int8 quantization of the encoder's Linear layers (weights int8, activations per batch).

    The inner HF model's encoder is quantized in place, not the CrossEncoder wrapper; the pooler and the
    one-output classifier stay fp32 (they cost nothing and carry the score).
    """
    hf = ce[0].auto_model
    target = getattr(hf, "base_model", None) or hf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao, still works in 2.13
        torch.ao.quantization.quantize_dynamic(target, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
