"""benchmarks/targets.py: the targets a run is judged by, from made-up results (no timing is measured)."""

from __future__ import annotations

from benchmarks.targets import compute_targets, is_fast, model_targets


def row(system, c, p50, pairs, workload="W30"):
    return {"system": system, "workload": workload, "concurrency": c, "p50_ms": p50, "pairs_per_s": pairs}


SYSTEMS = [{"system": "inprocess", "kind": "inprocess", "env": {}},
           {"system": "service", "kind": "service", "env": {}, "mode": {"backend": "onnx", "precision": "fp32"}},
           {"system": "service-2x1", "kind": "service", "env": {"NUM_THREADS": "1", "RERANKER_PRECISION": "fp32"}},
           {"system": "service-ov", "kind": "service", "env": {"RERANKER_BACKEND": "openvino"}},
           {"system": "service-fast", "kind": "service", "env": {"RERANKER_PRECISION": "fast"},
            "mode": {"backend": "onnx", "precision": "int8"}},
           {"system": "service-bf16", "kind": "service", "env": {"RERANKER_PRECISION": "bf16"}}]
RESULTS = [row("inprocess", 1, 3000, 10), row("service", 1, 2000, 15), row("service", 8, 30000, 26),
           row("service-2x1", 1, 100, 300), row("service-2x1", 8, 2500, 20),  # exact too, by its precision
           row("service-ov", 1, 2100, 14),
           row("service-fast", 1, 700, 50), row("service-fast", 8, 4000, 60),
           row("service-bf16", 1, 600, 37), row("service-bf16", 8, 5000, 48),
           row("infinity-onnx", 8, 8000, 28), row("litserve", 8, 18000, 13)]


def test_fast_modes_are_service_systems_not_asked_for_exactness():
    assert [is_fast(s) for s in SYSTEMS] == [False, False, False, False, True, True]


def targets(res):
    return {t["name"]: (t["value"], t["ok"]) for t in model_targets(res)}


def test_model_targets_take_the_best_system_of_each_kind_in_the_run():
    got = targets({"results": RESULTS, "systems": SYSTEMS})
    assert got == {
        "exact (service-2x1): W30 p50 via the service / in-process predict (c1)": (0.03, True),
        "exact (service: onnx fp32): W30 pairs/s at c8 / sequential in-process": (2.6, True),
        "exact (service: onnx fp32): pairs/s at c8 / fastest peer (infinity-onnx)": (0.93, False),
        "fastest mode (service-bf16): W30 p50 / in-process fp32 predict (c1)": (0.2, True),
        "fastest mode (service-bf16): pairs/s at c8 / fastest peer (infinity-onnx)": (1.71, False),
    }


def test_the_fastest_modes_quality_and_every_cold_start_are_targets():
    quality = {"modes": [{"mode": "service-bf16", "spearman_mean": 0.995, "spearman_min": 0.98,
                          "top10_overlap_mean": 0.94, "top10_overlap_min": 0.8}]}
    got = targets({"results": RESULTS, "systems": SYSTEMS, "quality": quality})
    assert got["fastest mode (service-bf16): Spearman vs fp32, mean (min 0.98)"] == (0.995, True)
    assert got["fastest mode (service-bf16): top-10 overlap vs fp32, mean (min 0.8)"] == (0.94, False)
    systems = [dict(SYSTEMS[1], cold_start_s=[3.0, 6.5, 4.0]), dict(SYSTEMS[4], cold_start_s=[5.5, 6.0, 1.0])]
    cold = {t["name"]: (t["value"], t["ok"]) for t in compute_targets({"results": [], "systems": systems})}
    assert cold == {"cold start (service: onnx fp32): python -m worker to READY, warm caches, median of 3": ("4.00 s", True),
                    "cold start (service-fast: onnx int8): python -m worker to READY, warm caches, median of 3":
                        ("5.50 s", False)}


def test_model_targets_need_the_reference_and_skip_failed_points():
    assert model_targets({"results": RESULTS[1:], "systems": SYSTEMS}) == []
    failed = [dict(r, errors=1) if r["system"] in ("service", "service-2x1", "service-ov") else r for r in RESULTS]
    names = [t["name"] for t in model_targets({"results": failed, "systems": SYSTEMS})]
    assert names and not any(n.startswith("exact") for n in names)
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
