"""benchmarks/targets.py: the targets a run is judged by, from made-up results (no timing is measured)."""

from __future__ import annotations

from benchmarks.targets import compute_targets, is_fast, model_targets


def row(system, c, p50, pairs, workload="W30"):
    return {"system": system, "workload": workload, "concurrency": c, "p50_ms": p50, "pairs_per_s": pairs}


SYSTEMS = [{"system": "inprocess", "kind": "inprocess", "env": {}},
           {"system": "service", "kind": "service", "env": {}},
           {"system": "service-2x1", "kind": "service", "env": {"NUM_THREADS": "1"}},
           {"system": "service-ov", "kind": "service", "env": {"RERANKER_BACKEND": "openvino"}},
           {"system": "service-bf16", "kind": "service", "env": {"RERANKER_PRECISION": "bf16"}}]
RESULTS = [row("inprocess", 1, 3000, 10), row("service", 1, 2000, 15), row("service", 8, 30000, 13),
           row("service-2x1", 1, 100, 300),  # fp32: not a fast mode, however fast
           row("service-ov", 1, 600, 50), row("service-ov", 8, 4000, 60),
           row("service-bf16", 1, 800, 37), row("service-bf16", 8, 5000, 48),
           row("infinity-onnx", 8, 8000, 28), row("litserve", 8, 18000, 13)]


def test_fast_modes_are_service_systems_off_torch_fp32():
    assert [is_fast(s) for s in SYSTEMS] == [False, False, False, True, True]


def test_model_targets_compare_the_service_with_the_reference_and_the_fastest_peer():
    got = {t["name"].split(":")[0] + ":" + t["name"].split("/")[-1]: (t["value"], t["ok"])
           for t in model_targets({"results": RESULTS, "systems": SYSTEMS})}
    assert list(got.values()) == [(0.67, True), (1.3, False), (0.2, True), (2.14, True)]
    assert any("service-ov" in name and "infinity-onnx" in name for name in got)


def test_model_targets_need_the_reference_and_skip_failed_points():
    assert model_targets({"results": RESULTS[1:], "systems": SYSTEMS}) == []
    failed = [dict(r, errors=1) if r["system"] == "service" else r for r in RESULTS]
    names = [t["name"] for t in model_targets({"results": failed, "systems": SYSTEMS})]
    assert names and not any(n.startswith("exact:") for n in names)
    other = model_targets({"results": [row(r["system"], r["concurrency"], r["p50_ms"], r["pairs_per_s"], "W5")
                                       for r in RESULTS], "systems": SYSTEMS})
    assert other == []  # W30 only, unless asked


def test_gateway_and_scaling_targets():
    res = {"results": [], "systems": [],
           "gateway_overhead": {"runs": [
               {"web_concurrency": 1, "connections": 32, "requests_per_s": 1400.0, "p99_ms": 20.0},
               {"web_concurrency": 2, "connections": 32, "requests_per_s": 2100.4, "p99_ms": 30.0},
               {"web_concurrency": 4, "error": "wrk failed"}]},
           "scaling": {"points": [{"workers": 1, "speedup": 1.0, "w240_vs_ideal": 1.0},
                                  {"workers": 2, "speedup": 1.9, "w240_vs_ideal": 1.1},
                                  {"workers": 4, "speedup": 3.0, "w240_vs_ideal": 1.4}]}}
    got = {t["name"]: (t["value"], t["ok"]) for t in compute_targets(res)}
    assert got["gateway W30 req/s at c32 (stub, WEB_CONCURRENCY=2)"] == (2100, True)
    assert got["gateway W30 p99 at c32 (same run)"] == ("30.0 ms", False)  # the best run's p99, not the lowest
    assert got["scaling: throughput with 2 stub workers / one worker's"] == (1.9, True)
    assert got["scaling: throughput with 4 stub workers / one worker's"] == (3.0, False)
    assert got["scaling: W240 over 4 idle workers / (t1/4)"] == (1.4, False)
    assert not any("with 1 stub workers" in name for name in got)
