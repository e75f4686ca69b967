"""The scorer modes, named once: each backend and the precisions it can run, and the two requests that
the worker turns into one of them at start.

Settings validate RERANKER_BACKEND and RERANKER_PRECISION against these names; the worker
looks its runtimes up by them. The stub backend (tests and demos only) has no precision.

- RERANKER_BACKEND=auto: the worker picks the backend (worker/selection.py).
- RERANKER_PRECISION=exact (the default): scores equal `CrossEncoder.predict`'s; fp32 in whichever
  backend is fastest here. fast: the fastest mode within the drift budget on this CPU.
"""

from __future__ import annotations

MODES: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "int8"),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "stub": (),
}
AUTO = "auto"
EXACT, FAST = "exact", "fast"
BACKENDS: tuple[str, ...] = (AUTO, *MODES)
PRECISIONS: tuple[str, ...] = (EXACT, FAST, *dict.fromkeys(p for ps in MODES.values() for p in ps))
