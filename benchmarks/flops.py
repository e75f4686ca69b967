"""Model FLOPs of a DeBERTa-v2 cross-encoder, and this machine's GEMM peaks (torch, fp32/bf16/int8).

FLOPs are counted for the useful work: each pair's forward pass at its own length (no padding),
multiply-adds as 2 FLOPs. Per layer and pair of L tokens, hidden H, intermediate I, relative
attention span S (2 x position_buckets):
    projections  2 L (4 H^2 + 2 H I)      (query, key, value, output, two FFN matrices)
    attention    4 L^2 H                  (QK^T and AV)
    relative     4 L S H                  (c2p and p2c against the S relative positions)
Embeddings, layer norms, softmax, the pooler and the once-per-batch projection of the relative
embeddings are left out (a few % at these lengths), so achieved GFLOP/s is a slight underestimate.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def model_shape(model_dir: str | Path) -> dict:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    buckets = cfg.get("position_buckets", -1)
    span = buckets if buckets and buckets > 0 else cfg.get("max_relative_positions", -1)
    if span is None or span < 1:
        span = cfg.get("max_position_embeddings", 512)
    rel = "c2p" in (cfg.get("pos_att_type") or []) or "p2c" in (cfg.get("pos_att_type") or [])
    return {"layers": cfg["num_hidden_layers"], "hidden": cfg["hidden_size"], "intermediate": cfg["intermediate_size"],
            "relative_span": 2 * span if cfg.get("relative_attention") and rel else 0}


def pair_flops(length: int, shape: dict) -> float:
    L, H, I, S = length, shape["hidden"], shape["intermediate"], shape["relative_span"]
    per_layer = 2 * L * (4 * H * H + 2 * H * I) + 4 * L * L * H + 4 * L * S * H
    return float(shape["layers"] * per_layer)


def request_flops(pair_lengths: list[int], shape: dict) -> float:
    return sum(pair_flops(L, shape) for L in pair_lengths)


# -- peaks -----------------------------------------------------------------------------

def _best_rate(fn, flops: float, seconds: float) -> float:
    fn()  # warm up (and let oneDNN pick its kernels)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        fn()
        best = max(best, flops / (time.perf_counter() - t))
    return best


def measure_peaks(threads: int, seconds: float = 2.0, n: int = 2048) -> dict:
    """Best-of GEMM rates in GFLOP/s (GOP/s for int8) on `threads` torch threads.

    fp32 and bf16: torch.matmul of n x n matrices. int8: a dynamically quantized nn.Linear
    (torch.ao.quantization.quantize_dynamic, the int8 GEMM that int8 CPU inference uses) on an
    n x n input, counting its n^3 multiply-adds.
    """
    import warnings

    import torch

    torch.set_num_threads(threads)
    out = {"threads": threads, "n": n, "seconds_each": seconds}
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    flops = 2.0 * n ** 3
    with torch.inference_mode():
        out["fp32"] = round(_best_rate(lambda: torch.matmul(a, b), flops, seconds) / 1e9, 1)
        try:
            a16, b16 = a.bfloat16(), b.bfloat16()
            out["bf16"] = round(_best_rate(lambda: torch.matmul(a16, b16), flops, seconds) / 1e9, 1)
        except RuntimeError as exc:
            out["bf16"] = None
            out["bf16_error"] = str(exc)[:200]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(n, n, bias=False)),
                                                             {torch.nn.Linear}, dtype=torch.qint8)
            out["int8"] = round(_best_rate(lambda: lin(a), flops, seconds) / 1e9, 1)
        except Exception as exc:  # noqa: BLE001 - quantized engines are optional in some builds
            out["int8"] = None
            out["int8_error"] = str(exc)[:200]
    return out


def peak_for(env: dict[str, str], peaks: dict) -> tuple[str, float | None]:
    """The GEMM peak a system should be compared with, from its worker settings."""
    precision = (env.get("RERANKER_PRECISION") or "fp32").lower()
    key = precision if precision in ("fp32", "bf16", "int8") else "fp32"
    return key, peaks.get(key)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Measure this machine's GEMM peaks with torch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    print(json.dumps(measure_peaks(args.threads, args.seconds)))
