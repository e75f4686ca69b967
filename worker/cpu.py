"""What this CPU can do, and the worker's thread settings."""

from __future__ import annotations

import hashlib
import os

from shared.settings import usable_cpus  # noqa: F401 - the one definition; backends take it from here

# The instruction sets that decide which kernels the runtimes pick (and so which mode is fastest).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


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


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from /proc/cpuinfo ("unknown" if unreadable)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def bf16_supported(flags: set[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); without it bf16 is slower than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def vnni_supported(flags: set[str] | None = None) -> bool:
    """Whether the CPU has VNNI (uint8 x int8 dot products into 32 bits, no 16-bit saturation)."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def cpu_class(flags: set[str] | None = None) -> str:
    """The CPU's class for choosing a mode: amx, avx512-bf16, avx512-vnni, avx512, avx2 or baseline."""
    flags = cpu_flags() if flags is None else flags
    if {"amx_bf16", "amx_int8"} & flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512-bf16"
    if "avx512_vnni" in flags:
        return "avx512-vnni"
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    return "baseline"


def isa_tag(flags: set[str] | None = None) -> str:
    """A short name for this CPU's instruction sets, for caches that hold code or layouts made for them."""
    flags = cpu_flags() if flags is None else flags
    present = [f for f in ISA_FLAGS if f in flags]
    return f"{cpu_class(flags)}-{hashlib.sha1(' '.join(present).encode()).hexdigest()[:8]}"


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
