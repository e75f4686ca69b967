"""The scorer modes, named once: each backend and the precisions it can run.

Settings validate RERANKER_BACKEND and RERANKER_PRECISION against these names; the worker
looks its runtimes up by them. The stub backend (tests and demos only) has no precision.
"""

from __future__ import annotations

MODES: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16", "int8"),
    "onnx": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
    "stub": (),
}
BACKENDS: tuple[str, ...] = tuple(MODES)
PRECISIONS: tuple[str, ...] = tuple(dict.fromkeys(p for ps in MODES.values() for p in ps))
