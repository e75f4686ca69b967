"""RERANKER_BACKEND=torch: the CrossEncoder's own model in torch, fp32 (exact), bf16 or dynamic int8.

The inner Hugging Face model is converted once (bf16: its weights in bfloat16; int8: dynamic int8
Linear layers), its DeBERTa-v2 relative-position projections are computed once (worker/relpos.py,
bit-identically) and its relative attention narrowed to the positions in use (worker/backends/deberta.py),
and it is traced with TorchScript into the export cache (worker/backends/export.py). Later starts load
the traced module with torch alone: neither sentence-transformers nor transformers is imported, which
makes a start ~3x quicker. Tokenization and activation are predict's (worker/tokenizing.py; the
activation_fn in torch), so fp32 scores equal predict's within float rounding.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..cpu import set_threads
from ..relpos import memoize_relative_positions
from .export import Export, Exported, load_exported

if TYPE_CHECKING:
    from shared.settings import Settings


class TorchRuntime(Exported):
    def __init__(self, model: str, root: Path, precision: str, num_threads: int, max_length: int | None) -> None:
        import torch

        set_threads(num_threads)
        export = Export(model, root)
        self.path = export.artifact(f"torch/model_{precision}.pt", lambda tmp: trace(export, precision, tmp))
        export.release_source()
        super().__init__(export, max_length)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 points at torch.export; jit still works
            self.module = torch.jit.load(str(self.path)).eval()
        self._torch = torch

    def other_activation(self, path: str) -> Callable[[np.ndarray], np.ndarray]:
        import torch
        from sentence_transformers.util import import_from_string

        activation = import_from_string(path)()  # predict's own activation_fn, in torch
        return lambda logits: activation(torch.from_numpy(logits)).float().numpy()

    def forward(self, features: dict[str, Any]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.module(*(torch.from_numpy(features[name]) for name in self.inputs))
            return logits.float().numpy()  # as predict: bf16 upcast before the activation


def load(settings: Settings) -> TorchRuntime:
    return load_exported(TorchRuntime, settings)


def trace(export: Export, precision: str, tmp: Path) -> None:
    """The inner model in `precision`, its constants computed, traced into `tmp` (TorchScript)."""
    import torch

    hf = export.source()[0].auto_model.eval()
    if precision == "bf16":
        hf = hf.to(torch.bfloat16)
    elif precision == "int8":
        quantize_int8(hf)
    memoize_relative_positions(hf)
    example = export.example()
    inputs = tuple(example[name] for name in export.meta["inputs"])
    with torch.no_grad(), export.wrapper(hf) as module:
        module(*inputs)  # fills the memo, so that the projected tables enter the trace as constants
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings on shape arithmetic: the shapes stay symbolic
            traced = torch.jit.trace(module, inputs, check_trace=False)
    traced.save(str(tmp))


def quantize_int8(hf) -> None:
    """Dynamic int8 quantization of the encoder's Linear layers (weights int8, activations per batch).

    The encoder is quantized in place; the pooler and the one-output classifier stay fp32 (they cost
    nothing and carry the score).
    """
    import torch

    target = getattr(hf, "base_model", None) or hf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao, still works in 2.13
        torch.ao.quantization.quantize_dynamic(target, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
