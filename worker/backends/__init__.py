"""The backends, by name: each loads a `Runtime` (worker/runtime.py) for CrossEncoderScorer.

`RUNTIMES` maps every backend of shared.modes.MODES (but the stub, which is a whole scorer,
worker/stub.py) to the module that loads it; a module is imported only when its backend is chosen,
so the default install needs neither onnxruntime nor openvino. `check_mode` refuses, before anything
heavy is loaded, a mode that this install or CPU cannot run.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Callable

from shared.modes import MODES

from ..cpu import bf16_supported
from ..runtime import ScorerError

if TYPE_CHECKING:
    from shared.settings import Settings

    from ..runtime import Runtime

STUB = "stub"
RUNTIMES: dict[str, str] = {backend: f"{__name__}.{backend}" for backend in MODES if backend != STUB}
"""backend name -> module whose `load(settings)` returns its Runtime."""

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


def runtime_loader(backend: str) -> Callable[[Settings], Runtime]:
    """The function that loads `backend`'s runtime (its module is imported now, not before)."""
    return importlib.import_module(RUNTIMES[backend]).load


def _missing_modules(backend: str, precision: str) -> list[str]:
    wanted = EXTRAS.get(backend, ()) + MODE_EXTRAS.get((backend, precision), ())
    return [pip for module, pip in wanted if importlib.util.find_spec(module) is None]


def unavailable(backend: str, precision: str, flags: set[str] | None = None) -> str | None:
    """Why this backend/precision cannot run here (one line, naming the variable), or None if it can."""
    if backend not in MODES or not MODES[backend]:
        return f"RERANKER_BACKEND={backend} is unknown; use one of: {', '.join(MODES)}"
    if precision not in MODES[backend]:
        return (f"RERANKER_PRECISION={precision} is not supported with RERANKER_BACKEND={backend}; "
                f"use one of: {', '.join(MODES[backend])}" + ("" if backend == "torch" else " (or RERANKER_BACKEND=torch)"))
    missing = _missing_modules(backend, precision)
    if missing:
        return (f"RERANKER_BACKEND={backend} needs: pip install '.[{backend}]' "
                f"(missing: {', '.join(missing)}; keep torch with -c constraints/torch-cpu.txt)")
    if (backend, precision) in NEEDS_BF16_CPU and not bf16_supported(flags):
        return ("RERANKER_PRECISION=bf16 needs a CPU with AVX512-BF16 or AMX-BF16, and /proc/cpuinfo lists "
                "neither (bf16 would be slower than fp32 here); use RERANKER_PRECISION=fp32 or int8")
    return None


def check_mode(backend: str, precision: str, flags: set[str] | None = None) -> None:
    """Raise ScorerError (one line, naming the variable) unless this backend/precision can run here."""
    why = unavailable(backend, precision, flags)
    if why is not None:
        raise ScorerError(why)
