"""Scorers: what turns (query, sentence) pairs into float32 scores.

`load_scorer(settings)` picks one by RERANKER_BACKEND and RERANKER_PRECISION.

- torch fp32 (the default) is exact: its scores equal `CrossEncoder.predict`'s default output
  (sigmoid for one label) within float noise (< 1e-5), in the same order.
- torch bf16 / int8, onnx fp32 / int8 and openvino fp32 / bf16 / int8 are the fast modes; their drift
  and speed on this machine are measured by `python -m worker.scorer_drift` and written up in
  docs/precision.md. onnx and openvino are optional extras (`pip install '.[onnx]'`, `'.[openvino]'`).
  They run a graph exported once from the torch model and cached (worker/backends/export.py).
- The stub is for tests and demos only and is never the default.

Every mode shares one batching scheme (`CrossEncoderScorer.score`): the request is tokenized once,
pairs are sorted by token length, and the sorted run is cut into batches where the padding saved pays
for another forward pass (`batches`), with at most RERANKER_BATCH_SIZE pairs and RERANKER_BATCH_TOKENS
padded tokens (pairs x longest pair) a batch; the model runs, the activation is applied as predict does,
and scores go back in request order. On W30 with mxbai-base's shape this computes ~27% fewer tokens
than predict(batch_size=32), which pads the whole request to its longest pair (docs/precision.md).
Anything that can be done once (eval mode, activation, sessions, thread settings) is done at start.
"""

from __future__ import annotations

import os
import re
import threading
import time
import warnings
from typing import Any, Protocol, Sequence

import numpy as np

from shared.modes import MODES
from shared.settings import Settings

Pairs = Sequence[tuple[str, str]]

SINGLE_PENALTY = 1e12
BATCH_OVERHEAD_TOKENS = 32
"""What one more forward pass costs, in tokens (dispatch, and copying DeBERTa-v2's projected relative-position
table for every row of the batch; the projection itself is done once, worker/relpos.py). Padding is cut off
into a separate batch only where that saves more than this. Measured best of 0/16/32/64/96 on W30 and two
merged W30s with mxbai-base's shape, 2 threads (96 was right before the projection was memoised)."""

# What each backend can run, and the extra that provides it.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    # backend: ((module to import, pip name), ...)
    "onnx": (("onnxruntime", "onnxruntime"), ("onnx", "onnx")),
    "openvino": (("openvino", "openvino"),),
}
MODE_EXTRAS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("openvino", "int8"): (("nncf", "nncf"),),  # int8 weight compression
}
NEEDS_BF16_CPU = {("torch", "bf16"), ("openvino", "bf16")}


class ScorerError(RuntimeError):
    """The scorer cannot start; the message says what to change."""


class Scorer(Protocol):
    info: dict

    def score(self, pairs: Pairs) -> np.ndarray: ...


# -- checks done before anything heavy is loaded ------------------------------------------------------------


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor listed in /proc/cpuinfo (empty if unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags") and ":" in line:
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); without it bf16 is slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def _missing_modules(backend: str, precision: str) -> list[str]:
    import importlib.util

    wanted = EXTRAS.get(backend, ()) + MODE_EXTRAS.get((backend, precision), ())
    return [pip for module, pip in wanted if importlib.util.find_spec(module) is None]


def check_mode(backend: str, precision: str, flags: set[str] | None = None) -> None:
    """Raise ScorerError (one line, naming the variable) unless this backend/precision can run here."""
    if backend not in MODES or not MODES[backend]:
        raise ScorerError(f"RERANKER_BACKEND={backend} is unknown; use one of: {', '.join(MODES)}")
    if precision not in MODES[backend]:
        raise ScorerError(
            f"RERANKER_PRECISION={precision} is not supported with RERANKER_BACKEND={backend}; "
            f"use one of: {', '.join(MODES[backend])}"
            + ("" if backend == "torch" else " (or RERANKER_BACKEND=torch)")
        )
    missing = _missing_modules(backend, precision)
    if missing:
        raise ScorerError(
            f"RERANKER_BACKEND={backend} needs: pip install '.[{backend}]' "
            f"(missing: {', '.join(missing)}; keep torch with -c constraints/torch-cpu.txt)"
        )
    if (backend, precision) in NEEDS_BF16_CPU and not bf16_supported(flags):
        raise ScorerError(
            "RERANKER_PRECISION=bf16 needs a CPU with AVX512-BF16 or AMX-BF16, and /proc/cpuinfo lists "
            "neither (bf16 would be slower than fp32 here); use RERANKER_PRECISION=fp32 or int8"
        )


def set_threads(num_threads: int) -> None:
    """NUM_THREADS intra-op threads, one inter-op thread, no tokenizer thread pool."""
    import torch

    # One job at a time uses NUM_THREADS compute threads; tokenizer threads would only compete with them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(1)  # one job at a time: inter-op threads would only oversubscribe
    except RuntimeError:
        pass  # already set in this process (it can be set once, before any parallel work)


# -- the scorer -------------------------------------------------------------------------------------------


def _load_failure(model: str, exc: BaseException) -> ScorerError:
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
        raise _load_failure(model, exc) from exc
    ce.eval()
    return ce


class CrossEncoderScorer:
    """A CrossEncoder's scores (default activation: sigmoid for one label), in any backend and precision."""

    def __init__(self, settings: Settings) -> None:
        backend, precision = settings.backend, settings.precision
        check_mode(backend, precision)
        import torch

        self._torch = torch
        set_threads(settings.num_threads)
        self.batch_size = settings.batch_size
        self.batch_tokens = settings.batch_tokens
        if self.batch_tokens < 1:
            raise ScorerError(f"RERANKER_BATCH_TOKENS={self.batch_tokens} must be >= 1")
        self.batch_overhead = BATCH_OVERHEAD_TOKENS
        self._lock = threading.Lock()  # one forward pass at a time: sessions and infer requests are not re-entrant
        extra: dict[str, Any] = {}
        if backend == "torch":
            self._init_torch(settings, precision)
        else:
            from .backends.export import export_root

            root = export_root(settings.model, settings.export_dir)
            if backend == "onnx":
                from .backends.onnx import OnnxModel as runtime
            else:
                from .backends.openvino import OpenVINOModel as runtime
            try:
                model = runtime(settings.model, root, precision, settings.num_threads, settings.max_length)
            except ScorerError:
                raise
            except Exception as exc:  # noqa: BLE001 - export/load failures: one line, with the cause
                raise _load_failure(settings.model, exc) from exc
            self._tokenize = model.tokenize
            self._forward = model.forward
            self.num_labels = model.num_labels
            self.activation = model.activation
            self.padding_side = model.padding_side
            self.max_length = model.max_length
            extra = {"export": str(model.path)}
        if self.num_labels != 1:
            raise ScorerError(f"RERANKER_MODEL={settings.model} has {self.num_labels} labels; "
                              "a reranker needs a one-label cross-encoder")
        self.info = {
            "model": settings.model,
            "backend": backend,
            "precision": precision,
            "threads": settings.num_threads,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            **extra,
        }

    # -- torch ---------------------------------------------------------------------------------------------

    def _init_torch(self, settings: Settings, precision: str) -> None:
        torch = self._torch
        kwargs: dict[str, Any] = {}
        if precision == "bf16":
            kwargs["model_kwargs"] = {"dtype": torch.bfloat16}
        ce = load_cross_encoder(settings.model, settings.max_length, **kwargs)
        if precision == "int8":
            quantize_int8(ce)
        from .relpos import memoize_relative_positions

        self.memos = memoize_relative_positions(ce[0].auto_model)  # exact: constants computed once
        self.model = ce
        self.num_labels = ce.num_labels
        self.activation = ce.activation_fn
        self.padding_side = getattr(ce[0].tokenizer, "padding_side", "right")
        self.max_length = ce.max_seq_length

        def tokenize(pairs: list[tuple[str, str]]) -> dict[str, Any]:
            return ce.preprocess(pairs)  # exactly predict's tokenization, padded to the request's longest

        def forward(features: dict[str, Any]):
            return ce(features)["scores"]  # through __call__, as predict does

        self._tokenize = tokenize
        self._forward = forward

    # -- scoring -------------------------------------------------------------------------------------------

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Pair indices grouped for forward passes, in request-independent, length-sorted order.

        Pairs are sorted longest first and cut into runs; each run is padded to its first (longest) pair.
        The cuts minimise the padded tokens computed plus BATCH_OVERHEAD_TOKENS per forward pass, subject
        to at most `batch_size` pairs and `batch_tokens` padded tokens a batch (a single pair longer than
        the budget still runs alone), and avoiding batches of one pair where possible. One dynamic
        programme over the sorted lengths, O(n x batch size).
        """
        n = len(lengths)
        order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")  # ties keep request order
        ls = np.maximum(np.asarray(lengths, dtype=np.int64)[order], 1)
        # Alone only where the budget or batch size leaves no choice (or the request is one pair).
        single_penalised = (n > 1) & (self.batch_size > 1) & (2 * ls <= self.batch_tokens)
        best = np.zeros(n + 1)
        cut = np.zeros(n + 1, dtype=np.int64)
        for j in range(1, n + 1):
            lo = max(0, j - self.batch_size)
            i = np.arange(lo, j)
            size = j - i
            allowed = (size * ls[lo:j] <= self.batch_tokens) | (size == 1)
            cost = np.where(allowed, best[lo:j] + self.batch_overhead + size * ls[lo:j], np.inf)
            # A pair alone takes another code path (no batch dimension to vectorise over) whose float
            # rounding differs from predict's batched one, so batches of one are a last resort.
            cost = np.where((size == 1) & single_penalised[lo:j], cost + SINGLE_PENALTY, cost)
            k = int(np.argmin(cost))
            best[j], cut[j] = cost[k], lo + k
        out: list[list[int]] = []
        j = n
        while j > 0:
            out.append(order[cut[j]:j].tolist())
            j = int(cut[j])
        return out[::-1]

    def score(self, pairs: Pairs) -> np.ndarray:
        pairs = [(q, s) for q, s in pairs]
        if not pairs:
            return np.zeros(0, dtype=np.float32)
        torch = self._torch
        scores = np.empty(len(pairs), dtype=np.float32)
        with self._lock, torch.inference_mode():
            features = self._tokenize(pairs)
            mask = features["attention_mask"]
            lengths = mask.sum(1).tolist()
            width = mask.shape[1]
            for batch in self.batches(lengths):
                longest = int(max(lengths[i] for i in batch))
                cols = slice(0, longest) if self.padding_side != "left" else slice(width - longest, width)
                index = torch.tensor(batch)
                sub = {k: (v[index, cols] if isinstance(v, torch.Tensor) and v.ndim == 2 else v)
                       for k, v in features.items()}  # rows of this batch, padded to its longest pair
                logits = self._forward(sub)
                if torch.is_floating_point(logits) and torch.finfo(logits.dtype).bits < 32:
                    logits = logits.float()  # as predict: upcast bf16 before the activation
                out = self.activation(logits)
                scores[batch] = out.reshape(len(batch)).float().numpy()
        return scores


def quantize_int8(ce) -> None:
    """Dynamic int8 quantization of the encoder's Linear layers (weights int8, activations per batch).

    The inner HF model's encoder is quantized in place, not the CrossEncoder wrapper; the pooler and the
    one-output classifier stay fp32 (they cost nothing and carry the score).
    """
    import torch

    hf = ce[0].auto_model
    target = getattr(hf, "base_model", None) or hf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantize_dynamic is deprecated in favour of torchao, still works in 2.13
        torch.ao.quantization.quantize_dynamic(target, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


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
