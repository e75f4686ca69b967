"""The targets a benchmark run is judged by: ratios between the systems of one run, never absolute timings.

`compute_targets(results)` reads a run's results (benchmarks/suite.py writes them) and returns rows
{name, value, goal, ok}; report.py prints them.

The service systems are split by what their workers were asked for: exact (RERANKER_PRECISION unset,
exact or fp32: scores equal predict's) and fast (anything else, e.g. RERANKER_PRECISION=fast, which
picks the fastest mode on the machine it runs on). The targets take the best system of each kind in
the run, so no mode is named here: which one is fastest depends on the CPU.
"""

from __future__ import annotations

import statistics

PEERS = ("infinity-torch", "infinity-onnx", "litserve")
EXACT = ("exact", "fp32")
COLD_START_S = 5.0


def precision(system: dict) -> str:
    return ((system.get("env") or {}).get("RERANKER_PRECISION") or "exact").lower()


def is_fast(system: dict) -> bool:
    """A service system asked for a fast mode (not exact)."""
    return system["kind"] == "service" and precision(system) not in EXACT


def is_exact(system: dict) -> bool:
    return system["kind"] == "service" and precision(system) in EXACT


def _label(system: dict) -> str:
    mode = system.get("mode") or {}
    return f"{system['system']}: {mode['backend']} {mode['precision']}" if mode else system["system"]


def model_targets(res: dict, workload: str = "W30") -> list[dict]:
    """The exact-mode and fastest-mode targets, from the `workload` points of this run."""
    at = {(r["system"], r["concurrency"]): r for r in res.get("results", [])
          if r.get("workload") == workload and r.get("p50_ms") and not r.get("errors")}
    ref = at.get(("inprocess", 1))
    if ref is None:
        return []
    systems = {s["system"]: s for s in res.get("systems", [])}
    peers = [at[(p, 8)] for p in PEERS if (p, 8) in at]
    top = max(peers, key=lambda r: r["pairs_per_s"]) if peers else None
    out = []

    def row(name: str, value: float, goal: str, ok: bool, digits: int = 2) -> None:
        out.append({"name": name, "value": round(value, digits), "goal": goal, "ok": ok})

    exact = [n for n, s in systems.items() if is_exact(s)]
    at1 = [n for n in exact if (n, 1) in at]
    if at1:
        best = min(at1, key=lambda n: at[(n, 1)]["p50_ms"])
        ratio = at[(best, 1)]["p50_ms"] / ref["p50_ms"]
        row(f"exact ({_label(systems[best])}): {workload} p50 via the service / in-process predict (c1)",
            ratio, "<= 1.05", ratio <= 1.05)
    at8 = [n for n in exact if (n, 8) in at]
    if at8:
        best = max(at8, key=lambda n: at[(n, 8)]["pairs_per_s"])
        ratio = at[(best, 8)]["pairs_per_s"] / ref["pairs_per_s"]
        row(f"exact ({_label(systems[best])}): {workload} pairs/s at c8 / sequential in-process", ratio, ">= 2.5",
            ratio >= 2.5)
        if top:
            ratio = at[(best, 8)]["pairs_per_s"] / top["pairs_per_s"]
            row(f"exact ({_label(systems[best])}): pairs/s at c8 / fastest peer ({top['system']})", ratio, ">= 1.5",
                ratio >= 1.5)
    fast = [n for n, s in systems.items() if is_fast(s) and (n, 1) in at]
    if fast:
        best = min(fast, key=lambda n: at[(n, 1)]["p50_ms"])
        ratio = at[(best, 1)]["p50_ms"] / ref["p50_ms"]
        row(f"fastest mode ({_label(systems[best])}): {workload} p50 / in-process fp32 predict (c1)", ratio,
            "<= 0.25", ratio <= 0.25, 3)
        if top and (best, 8) in at:
            ratio = at[(best, 8)]["pairs_per_s"] / top["pairs_per_s"]
            row(f"fastest mode ({_label(systems[best])}): pairs/s at c8 / fastest peer ({top['system']})", ratio,
                ">= 2.5", ratio >= 2.5)
        out += quality_targets(res, best)
    return out


def quality_targets(res: dict, system: str) -> list[dict]:
    """The fastest mode's ranking against fp32 on the quality data of this run (benchmarks/quality.py)."""
    rows = [m for m in (res.get("quality") or {}).get("modes", []) if m.get("mode") == system and "error" not in m]
    if not rows:
        return []
    q = rows[0]
    return [{"name": f"fastest mode ({system}): Spearman vs fp32, mean (min {q['spearman_min']})",
             "value": q["spearman_mean"], "goal": ">= 0.99", "ok": q["spearman_mean"] >= 0.99},
            {"name": f"fastest mode ({system}): top-10 overlap vs fp32, mean (min {q['top10_overlap_min']})",
             "value": q["top10_overlap_mean"], "goal": ">= 0.95", "ok": q["top10_overlap_mean"] >= 0.95}]


def cold_start_targets(res: dict) -> list[dict]:
    out = []
    for s in res.get("systems", []):
        times = s.get("cold_start_s")
        if s.get("kind") == "service" and times:
            median = statistics.median(times)
            out.append({"name": f"cold start ({_label(s)}): python -m worker to READY, warm caches, median of "
                                f"{len(times)}", "value": f"{median:.2f} s", "goal": f"<= {COLD_START_S:g} s",
                        "ok": median <= COLD_START_S})
    return out


def compute_targets(res: dict) -> list[dict]:
    out = model_targets(res) + cold_start_targets(res)
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
