"""What this CPU can do, and the worker's thread settings."""

from __future__ import annotations

import os

from shared.settings import usable_cpus  # noqa: F401 - the one definition; backends take it from here


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
