"""The targets a benchmark run is judged by: ratios between the systems of one run, never absolute timings.

`compute_targets(results)` reads a run's results (benchmarks/suite.py writes them) and returns rows
{name, value, goal, ok}; report.py prints them.
"""

from __future__ import annotations

PEERS = ("infinity-torch", "infinity-onnx", "litserve")


def is_fast(system: dict) -> bool:
    """A service system in a fast mode (not torch fp32)."""
    env = system.get("env") or {}
    return system["kind"] == "service" and (env.get("RERANKER_BACKEND", "torch") != "torch"
                                            or env.get("RERANKER_PRECISION", "fp32") != "fp32")


def model_targets(res: dict, workload: str = "W30") -> list[dict]:
    """The exact-mode and fastest-mode targets, from the `workload` points of this run."""
    at = {(r["system"], r["concurrency"]): r for r in res.get("results", [])
          if r.get("workload") == workload and r.get("p50_ms") and not r.get("errors")}
    ref = at.get(("inprocess", 1))
    if ref is None:
        return []
    out = []
    service, service8 = at.get(("service", 1)), at.get(("service", 8))
    if service:
        ratio = service["p50_ms"] / ref["p50_ms"]
        out.append({"name": f"exact: {workload} p50 via the service / in-process predict (c1)",
                    "value": round(ratio, 2), "goal": "<= 1.05", "ok": ratio <= 1.05})
    if service8:
        ratio = service8["pairs_per_s"] / ref["pairs_per_s"]
        out.append({"name": f"exact: {workload} pairs/s via the service at c8 / sequential in-process",
                    "value": round(ratio, 2), "goal": ">= 1.4", "ok": ratio >= 1.4})
    fast = [s["system"] for s in res.get("systems", []) if is_fast(s) and (s["system"], 1) in at]
    if fast:
        best = min(fast, key=lambda name: at[(name, 1)]["p50_ms"])
        ratio = at[(best, 1)]["p50_ms"] / ref["p50_ms"]
        out.append({"name": f"fastest mode ({best}): {workload} p50 / in-process fp32 predict (c1)",
                    "value": round(ratio, 3), "goal": "<= 0.25", "ok": ratio <= 0.25})
        peers = [at[(p, 8)] for p in PEERS if (p, 8) in at]
        if peers and (best, 8) in at:
            top = max(peers, key=lambda r: r["pairs_per_s"])
            ratio = at[(best, 8)]["pairs_per_s"] / top["pairs_per_s"]
            out.append({"name": f"fastest mode ({best}): pairs/s at c8 / fastest peer ({top['system']})",
                        "value": round(ratio, 2), "goal": ">= 2", "ok": ratio >= 2})
    return out


def compute_targets(res: dict) -> list[dict]:
    out = model_targets(res)
    g = res.get("gateway_overhead") or {}
    good = [r for r in g.get("runs", []) if not r.get("error")]
    if good:
        best = max(good, key=lambda r: r["requests_per_s"])
        out.append({"name": f"gateway W30 req/s at c{best['connections']} (stub, WEB_CONCURRENCY={best['web_concurrency']})",
                    "value": round(best["requests_per_s"]), "goal": ">= 1500", "ok": best["requests_per_s"] >= 1500})
        out.append({"name": f"gateway W30 p99 at c{best['connections']} (same run)", "value": f"{best['p99_ms']} ms",
                    "goal": "<= 25 ms", "ok": best["p99_ms"] is not None and best["p99_ms"] <= 25})
    s = res.get("scaling") or {}
    for p in s.get("points", []):
        if p["workers"] > 1:
            out.append({"name": f"scaling: throughput with {p['workers']} stub workers / one worker's",
                        "value": p["speedup"], "goal": f">= {0.9 * p['workers']:.1f}",
                        "ok": p["speedup"] is not None and p["speedup"] >= 0.9 * p["workers"]})
            out.append({"name": f"scaling: W240 over {p['workers']} idle workers / (t1/{p['workers']})",
                        "value": p["w240_vs_ideal"], "goal": "<= 1.25", "ok": p["w240_vs_ideal"] <= 1.25})
    return out
