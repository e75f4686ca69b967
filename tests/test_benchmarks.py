"""The benchmark suite (benchmarks/): a smoke run end to end, and its pure helpers.

No timing is asserted: only that the harness runs every part and writes the fields it promises.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_tokenizer_gives_about_1_3_tokens_per_word(tmp_path):
    from devkit.models import build_tokenizer, sample_text

    tok = build_tokenizer(tmp_path, 16000)
    rng = random.Random(5)
    texts = [sample_text(rng, 25) for _ in range(100)]
    tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert 1.2 <= tokens / 2500 <= 1.4
    assert "[UNK]" not in tok.tokenize(" ".join(texts[:5]))


def test_workloads_are_seeded_and_sized():
    from benchmarks.workloads import make_requests

    a, b = make_requests("W30", 3, seed=1), make_requests("W30", 3, seed=1)
    assert a == b and a != make_requests("W30", 3, seed=2)
    assert len({r.query for r in a}) == 3
    for r in a:
        assert r.pairs == 30 and 6 <= len(r.query.split()) <= 10
        assert all(10 <= len(s.split()) <= 40 for s in r.sentences)
    assert make_requests("W240", 1)[0].pairs == 240


def test_flops_of_mxbai_base_shape():
    from benchmarks.flops import pair_flops

    shape = {"layers": 12, "hidden": 768, "intermediate": 3072, "relative_span": 512}
    # 46 tokens: ~12 x (651M projections + 6.5M attention + 72M relative) = ~8.8 GFLOP
    assert 8.5e9 < pair_flops(46, shape) < 9.0e9
    assert pair_flops(92, shape) > 2 * pair_flops(46, shape)  # attention is quadratic


def test_quality_metrics():
    from benchmarks.quality import compare, spearman, top_k_overlap

    a = np.arange(20, dtype=float)
    assert spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert top_k_overlap(a, a) == 1.0
    b = a.copy()
    b[[0, 19]] = b[[19, 0]]  # the best and the worst swap
    assert top_k_overlap(a, b) == 0.9
    c = compare([a], [a + 0.001])
    assert c["max_abs_delta"] == pytest.approx(0.001) and c["spearman_min"] == pytest.approx(1.0)


def test_parse_wrk_output():
    from benchmarks.stub_bench import parse_wrk

    out = """Running 10s test @ http://127.0.0.1:8300/rerank
  1 threads and 32 connections
  Latency Distribution
     50%   15.10ms
     75%   17.02ms
     90%   20.51ms
     99%  950.00us
  20101 requests in 10.00s, 29.88MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   2009.87
"""
    r = parse_wrk(out)
    assert r["requests_per_s"] == 2009.87 and r["requests"] == 20101
    assert r["p50_ms"] == 15.1 and r["p99_ms"] == 0.95 and r["non_2xx"] == 3


def test_system_specs():
    from benchmarks.systems import SystemSpec

    s = SystemSpec.parse("service:RERANKER_PRECISION=bf16,WORKERS=2")
    assert (s.name, s.kind, s.env) == ("service-bf16", "service", {"RERANKER_PRECISION": "bf16", "WORKERS": "2"})
    assert SystemSpec.parse("service-ov:RERANKER_BACKEND=openvino").name == "service-ov"
    assert SystemSpec.parse("infinity-onnx").kind == "infinity-onnx"
    with pytest.raises(ValueError):
        SystemSpec.parse("tei")


@pytest.mark.model
def test_smoke_run_end_to_end(tmp_path, tiny_model):
    """`python -m benchmarks run --smoke`: every part runs and writes JSON, markdown and its fields."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", "--smoke", "--model", str(tiny_model), "--out", str(out),
         "--quality-mode", "bs4:RERANKER_BATCH_SIZE=4", "--quality-mode", "broken:RERANKER_BACKEND=nonsense"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    md = (out / "results.md").read_text()

    assert res["meta"]["preset"] == "smoke" and res["meta"]["cores"] >= 1 and 0 <= res["meta"]["busy_before"] <= 1
    assert res["peaks"]["fp32"] > 0 and "bf16" in res["peaks"] and "int8" in res["peaks"]
    w5 = res["workloads"]["W5"]
    assert w5["pairs"] == 5 and 1.1 < w5["tokens_per_word"] < 1.5 and w5["padded_tokens"] >= w5["pair_tokens"]

    rows = {(r["system"], r["concurrency"]): r for r in res["results"]}
    assert set(rows) >= {("inprocess", 1), ("original", 1), ("original", 2), ("service", 1), ("service", 2)}
    for (system, c), r in rows.items():
        assert "error" not in r, r
        assert r["requests"] >= 2 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"], r
        assert r["pairs_per_s"] > 0 and r["gflops"] >= 0 and r["vs_reference"] > 0, r
        assert 0 <= r["machine_cpu_busy"] <= 1.0, r
        assert all(v > 0 for v in r["rss_mb"].values()), r
    assert set(rows[("service", 1)]["rss_mb"]) == {"gateway", "worker"}
    assert rows[("inprocess", 1)]["vs_reference"] == 1.0
    assert {s["system"] for s in res["systems"]} == {"inprocess", "original", "service"}

    g = res["gateway_overhead"]
    if "skipped" not in g:  # wrk is installed
        run = g["runs"][0]
        assert run["requests_per_s"] > 0 and run["p99_ms"] > 0 and run["non_2xx"] == 0
        assert "loadgen_cpu_cores" in run and set(run["cpu_cores"]) == {"gateway", "worker"}
    else:
        assert "wrk" in g["skipped"]

    points = res["scaling"]["points"]
    assert [p["workers"] for p in points] == [1, 2]
    assert all(p["pairs_per_s"] > 0 and p["errors"] == 0 and p["w240_ms"] > 0 for p in points)

    modes = {m["mode"]: m for m in res["quality"]["modes"]}
    assert modes["fp32"]["max_abs_delta"] == 0.0
    assert modes["bs4"]["max_abs_delta"] < 1e-4 and modes["bs4"]["spearman_min"] > 0.99
    assert "error" in modes["broken"]  # a mode that cannot load is reported, not fatal

    for heading in ("| system |", "Gateway overhead", "Scaling", "Quality against torch fp32", "busy in the 5 s before"):
        assert heading in md
    assert "| service | W5 | 2 |" in md
    if (out / "latency.png").exists():
        assert (out / "latency.png").stat().st_size > 1000
