"""The benchmark suite of issue 4: one command, on a fresh machine.

    .venv/bin/python -m benchmarks run --quick          # W30 at c1/c8, all systems, ~10 min
    .venv/bin/python -m benchmarks run --full           # W5/W30 at c1/4/8/32 and W240, ~40 min
    .venv/bin/python -m benchmarks run --quick --service bf16:RERANKER_PRECISION=bf16
    .venv/bin/python -m benchmarks gateway              # stub gateway overhead only (wrk)
    .venv/bin/python -m benchmarks scaling              # stub scaling only
    .venv/bin/python -m benchmarks quality --mode bf16:RERANKER_PRECISION=bf16 [--data q.jsonl]
    .venv/bin/python -m benchmarks peaks                # GEMM peaks only
    bash benchmarks/peers/setup.sh                      # peer venvs (infinity-emb, LitServe)

Everything is written under benchmarks/results/<time>/ (results.json, results.md, latency.png,
logs/), and benchmarks/results/latest points there. The model is built on first use under
benchmarks/.models/ (random weights, the real architecture). Peers without a venv are skipped
with a note. Targets are ratios of this run; nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from . import flops, loadgen, quality, report, stub_bench, systems
from .models import build_model
from .procs import ROOT, Monitor, busy_share, loadavg, python
from .workloads import WORKLOADS, make_requests, token_stats

MODELS = ROOT / "benchmarks" / ".models"
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_SYSTEMS = ["inprocess", "original", "service", "infinity-torch", "infinity-onnx", "litserve"]

# Per preset: workloads with their concurrencies, requests per point (n = max(base, mult * c)), and the
# sizes of the stub benchmarks.
PRESETS = {
    "smoke": dict(arch="tiny", workloads={"W5": [1, 2]}, base=2, mult=1, max_point_s=60, inproc_n=2,
                  peaks_s=0.1, peaks_n=512, gateway_s=1, gateway_wc=[1], scaling=[1, 2], scaling_s=0.5,
                  scaling_delay=2.0, w240_repeats=1, quality_queries=2, systems=["inprocess", "original", "service"]),
    "quick": dict(arch="mxbai-base", workloads={"W30": [1, 8]}, base=3, mult=1.5, max_point_s=240, inproc_n=3,
                  peaks_s=2.0, peaks_n=2048, gateway_s=8, gateway_wc=[1, 2], scaling=[1, 2, 4, 8], scaling_s=4.0,
                  scaling_delay=10.0, w240_repeats=2, quality_queries=8, systems=DEFAULT_SYSTEMS),
    "full": dict(arch="mxbai-base", workloads={"W5": [1, 4, 8, 32], "W30": [1, 4, 8, 32], "W240": [1, 4]},
                 base=4, mult=2, max_point_s=300, inproc_n=4, peaks_s=3.0, peaks_n=2048, gateway_s=15,
                 gateway_wc=[1, 2], scaling=list(range(1, 9)), scaling_s=8.0, scaling_delay=10.0, w240_repeats=3,
                 quality_queries=24, systems=DEFAULT_SYSTEMS),
}


_T0 = time.monotonic()


def say(message: str) -> None:
    print(f"bench [{time.monotonic() - _T0:6.1f} s]: {message}", file=sys.stderr, flush=True)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The flags that decide which precisions run fast here."""
    from worker.scorer import cpu_flags as all_flags

    return sorted(all_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "avx_vnni"})


def ensure_model(arch: str, path: str | None) -> Path:
    if path:
        return Path(path).resolve()
    target = MODELS / arch
    say(f"model {arch} at {target} (built on first use)")
    return build_model(target, arch).resolve()


def measure_peaks(threads: int, seconds: float, n: int) -> dict:
    proc = subprocess.run([python(), "-c", f"import json; from benchmarks.flops import measure_peaks; "
                                           f"print(json.dumps(measure_peaks({threads}, {seconds}, {n})))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def workload_info(model: Path, names: list[str], seed: int) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model))
    shape = flops.model_shape(model)
    out = {}
    for name in names:
        reqs = make_requests(name, 16, seed)
        stats = token_stats(tok, reqs)
        lengths = stats.pop("pair_lengths")
        per_req = [flops.request_flops(ls, shape) for ls in lengths]
        stats["gflop_per_request"] = round(statistics.mean(per_req) / 1e9, 2)
        stats["flop_per_pair"] = statistics.mean(per_req) / stats["pairs"]
        out[name] = stats
    return out


def point_requests(preset: dict, c: int) -> int:
    return int(max(preset["base"], round(preset["mult"] * c)))


def start_system(spec: systems.SystemSpec, args, model: Path, logs: Path) -> tuple[dict, object | None]:
    """Start one system; (its row for res["systems"], its handle or None if skipped/failed)."""
    sysrow = {"system": spec.name, "kind": spec.kind, "env": spec.env}
    ok, why = spec.available()
    if not ok:
        say(f"{spec.name}: {why}")
        return {**sysrow, "skipped": why}, None
    say(f"starting {spec.name}")
    t0 = time.monotonic()
    try:
        if spec.kind == "inprocess":
            handle = systems.InProcess(spec, model, args.threads, args.seed, logs)
        else:
            handle = systems.start(spec, model, args.threads, logs, workers=args.workers)
    except Exception as exc:  # noqa: BLE001 - a system that cannot start is reported, not fatal
        say(f"{spec.name} failed to start: {str(exc)[:300]}")
        return {**sysrow, "error": f"failed to start: {str(exc)[:1500]}"}, None
    sysrow["start_s"] = round(time.monotonic() - t0, 1)
    sysrow["info"] = handle.info
    return sysrow, handle


def _merge_monitors(parts: list[dict]) -> dict:
    total = sum(m["window_s"] for m in parts) or 1.0
    groups = parts[0]["cpu_cores"].keys()
    return {"window_s": round(total, 3),
            "cpu_cores": {g: round(sum(m["cpu_cores"][g] * m["window_s"] for m in parts) / total, 3) for g in groups},
            "machine_cpu_busy": round(sum(m["machine_cpu_busy"] * m["window_s"] for m in parts) / total, 3),
            "rss_mb": {g: max(m["rss_mb"][g] for m in parts) for g in parts[0]["rss_mb"]}}


def _serial_row(name: str, workload: str, latencies_s: list[float], monitor: dict, how: str) -> dict:
    """A c=1 row from requests sent one at a time: throughput is pairs over the summed latencies."""
    lat = [x * 1000 for x in latencies_s]
    busy = sum(latencies_s)
    return {"system": name, "workload": workload, "concurrency": 1, "requests": len(lat), "errors": 0,
            "wall_s": round(busy, 3), "pairs_per_s": round(WORKLOADS[workload] * len(lat) / busy, 2),
            "requests_per_s": round(len(lat) / busy, 3),
            **{f"p{q}_ms": round(loadgen.percentile(lat, q), 1) for q in (50, 90, 99)},
            "mean_ms": round(sum(lat) / len(lat), 1), "method": how, **monitor}


def measure(handles: list, args, preset: dict, winfo: dict, peaks: dict, interleave: bool) -> list[dict]:
    """Every point of every handle. With `interleave`, c=1 points go round-robin, one request per system in
    turn, so that a machine whose load drifts treats them alike; other points run one system at a time."""
    rows: list[dict] = []

    def finish(h, row: dict) -> dict:
        pps = row.get("pairs_per_s")
        if pps:
            row["gflops"] = round(pps * winfo[row["workload"]]["flop_per_pair"] / 1e9, 3)
        rows.append(row)
        return row

    for workload, concs in preset["workloads"].items():
        pool = make_requests(workload, 64, args.seed)
        live = []
        for h in handles:
            if h.api == "inprocess":
                live.append(h)
                continue
            try:
                loadgen.send_one(h.url, h.api, make_requests(workload, 1, args.seed + 1000)[0])  # warm-up
                live.append(h)
            except Exception as exc:  # noqa: BLE001
                rows.append({"system": h.spec.name, "workload": workload, "error": f"warm-up failed: {exc}"[:500]})
        for c in concs:
            n = preset["inproc_n"] if c == 1 else point_requests(preset, c)
            if c == 1 and interleave:
                say(f"{workload} c=1: {n} rounds of one request per system ({', '.join(h.spec.name for h in live)})")
                lat: dict = {h: [] for h in live}
                mons: dict = {h: [] for h in live}
                for i in range(n):
                    for h in live:
                        with Monitor(h.groups()) as mon:
                            if h.api == "inprocess":
                                lat[h] += h.run(workload, i, 1)
                            else:
                                lat[h].append(loadgen.send_one(h.url, h.api, pool[i]))
                        mons[h].append(mon.summary())
                for h in live:
                    finish(h, _serial_row(h.spec.name, workload, lat[h], _merge_monitors(mons[h]), "interleaved"))
                continue
            for h in live:
                if h.api == "inprocess":
                    if c != 1:
                        continue  # serial by design: its throughput is the same at any concurrency
                    say(f"{h.spec.name} {workload}: {n} requests in a row")
                    with Monitor(h.groups()) as mon:
                        latencies = h.run(workload, 0, n)
                    finish(h, _serial_row(h.spec.name, workload, latencies, mon.summary(), "serial"))
                    continue
                say(f"{h.spec.name} {workload} c={c}: {n} requests")
                with Monitor(h.groups()) as mon:
                    samples = loadgen.closed_loop(h.url, h.api, pool, c, n, max_seconds=preset["max_point_s"])
                finish(h, {"system": h.spec.name, "workload": workload, "concurrency": c,
                           **loadgen.summarize(samples), "method": "closed loop", **mon.summary()})
    return rows


def bench_systems(specs: list[systems.SystemSpec], args, preset: dict, model: Path, logs: Path, winfo: dict,
                  peaks: dict) -> tuple[list[dict], list[dict]]:
    sysrows, rows = [], []
    if args.interleave:  # all systems up at once (memory: ~1.2 GB each, infinity-onnx ~6 GB)
        handles = []
        try:
            for spec in specs:
                sysrow, h = start_system(spec, args, model, logs)
                sysrows.append(sysrow)
                if h is not None:
                    handles.append(h)
            rows = measure(handles, args, preset, winfo, peaks, interleave=True)
        finally:
            for h in handles:
                h.stop()
        return sysrows, rows
    for spec in specs:  # one system at a time
        sysrow, h = start_system(spec, args, model, logs)
        sysrows.append(sysrow)
        if h is not None:
            try:
                rows += measure([h], args, preset, winfo, peaks, interleave=False)
            finally:
                h.stop()
    return sysrows, rows


PEERS = ("infinity-torch", "infinity-onnx", "litserve")


def is_fast(system: dict) -> bool:
    """A service system in a fast mode (not torch fp32)."""
    env = system.get("env") or {}
    return system["kind"] == "service" and (env.get("RERANKER_BACKEND", "torch") != "torch"
                                            or env.get("RERANKER_PRECISION", "fp32") != "fp32")


def model_targets(res: dict, workload: str = "W30") -> list[dict]:
    """Issue 4's exact-mode and fastest-mode targets, from the W30 points of this run."""
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


def add_peak_fractions(res: dict, specs: list[systems.SystemSpec]) -> None:
    by_name = {s.name: s for s in specs}
    for row in res["results"]:
        spec = by_name.get(row.get("system"))
        if spec is None or not row.get("gflops"):
            continue
        key, peak = flops.peak_for(spec.precision_env(), res.get("peaks") or {})
        if peak:
            row["peak_fraction"] = round(row["gflops"] / peak, 3)
            row["peak_key"] = key


def add_reference_ratios(res: dict) -> None:
    ref = {r["workload"]: r["pairs_per_s"] for r in res["results"] if r.get("system") == "inprocess" and r.get("pairs_per_s")}
    for r in res["results"]:
        if r.get("pairs_per_s") and r.get("workload") in ref:
            r["vs_reference"] = round(r["pairs_per_s"] / ref[r["workload"]], 3)


def cmd_run(args) -> int:
    preset_name = "smoke" if args.smoke else "full" if args.full else "quick"
    preset = dict(PRESETS[preset_name])
    if args.workloads:
        concs = [int(c) for c in args.concurrency.split(",")] if args.concurrency else [1, 8]
        preset["workloads"] = {w: concs for w in args.workloads.split(",")}
    elif args.concurrency:
        concs = [int(c) for c in args.concurrency.split(",")]
        preset["workloads"] = {w: concs for w in preset["workloads"]}
    if args.requests_scale != 1.0:
        preset["base"] = max(1, round(preset["base"] * args.requests_scale))
        preset["mult"] *= args.requests_scale
        preset["inproc_n"] = max(1, round(preset["inproc_n"] * args.requests_scale))
    out_dir = Path(args.out) if args.out else RESULTS / time.strftime("%Y%m%d-%H%M%S")
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.arch or preset["arch"], args.model)
    names = args.systems.split(",") if args.systems else list(preset["systems"])
    specs = [systems.SystemSpec.parse(n) for n in names]
    specs += [systems.SystemSpec.parse(s if s.startswith("service") else f"service-{s}") for s in args.service]
    try:
        import torch
        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    res: dict = {
        "meta": {"preset": preset_name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git_commit(),
                 "cpu": cpu_name(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
                 "torch": torch_version, "threads": args.threads, "workers": args.workers, "seed": args.seed,
                 "loadavg_before": loadavg(), "busy_before": round(busy_share(), 3), "argv": sys.argv[1:],
                 "note": "Compare ratios within one run; take final numbers on a quiet machine."},
        "model": {"arch": args.arch or preset["arch"], "path": str(model)},
    }
    say(f"load average {res['meta']['loadavg_before']:.2f}, CPU {res['meta']['busy_before']:.0%} busy at start")
    if not args.no_peaks:
        say("GEMM peaks")
        res["peaks"] = measure_peaks(args.threads, preset["peaks_s"], preset["peaks_n"])
    peaks = res.get("peaks") or {}
    res["workloads"] = workload_info(model, list(preset["workloads"]), args.seed)
    res["systems"], res["results"] = bench_systems(specs, args, preset, model, logs, res["workloads"], peaks)
    add_reference_ratios(res)
    if not args.no_peaks:  # again: on a shared machine the best of two is closer to the machine's peak
        say("GEMM peaks again")
        again = measure_peaks(args.threads, preset["peaks_s"], preset["peaks_n"])
        res["peaks"]["runs"] = [dict(peaks), again]
        for key in ("fp32", "bf16", "int8"):
            values = [v for v in (peaks.get(key), again.get(key)) if isinstance(v, (int, float))]
            res["peaks"][key] = max(values) if values else None
    add_peak_fractions(res, specs)
    if not args.no_gateway:
        say("gateway overhead (stub workers, wrk)")
        try:
            res["gateway_overhead"] = stub_bench.gateway_overhead(logs, web_concurrencies=preset["gateway_wc"],
                                                                  seconds=preset["gateway_s"], install_wrk=args.install_wrk)
        except Exception as exc:  # noqa: BLE001
            res["gateway_overhead"] = {"skipped": f"failed: {str(exc)[:500]}"}
    if not args.no_scaling:
        say("scaling (stub workers with a fixed cost per pair)")
        try:
            res["scaling"] = stub_bench.scaling(logs, counts=preset["scaling"], delay_ms=preset["scaling_delay"],
                                                seconds=preset["scaling_s"], w240_repeats=preset["w240_repeats"])
        except Exception as exc:  # noqa: BLE001
            res["scaling"] = {"skipped": f"failed: {str(exc)[:500]}"}
    modes = list(args.quality_mode) + [
        f"{s.name}:{','.join(f'{k}={v}' for k, v in s.env.items() if k.startswith('RERANKER_'))}"
        for s in specs if s.kind == "service" and any(k.startswith("RERANKER_") for k in s.env)]
    if modes or args.quality_data:
        say(f"quality of {', '.join(m.split(':')[0] for m in modes) or 'fp32'} against fp32")
        res["quality"] = quality.run(model, modes, Path(args.quality_data) if args.quality_data else None,
                                     args.threads, preset["quality_queries"])
    res["meta"]["loadavg_after"] = loadavg()
    res["targets"] = compute_targets(res)
    paths = report.write(res, out_dir)
    latest = RESULTS / "latest"
    if out_dir.parent == RESULTS:
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out_dir.name)
    print(report.markdown(res))
    print("\n" + "\n".join(f"bench: wrote {p}" for p in paths.values()), file=sys.stderr)
    return 0


def cmd_gateway(args) -> int:
    out = Path(args.out) if args.out else RESULTS / ("gateway-" + time.strftime("%Y%m%d-%H%M%S"))
    g = stub_bench.gateway_overhead(out / "logs", web_concurrencies=[int(x) for x in args.web_concurrency.split(",")],
                                    workers=args.stub_workers, connections=args.connections, seconds=args.seconds,
                                    install_wrk=args.install_wrk, profile=args.profile)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(g, indent=2))
    print(report.gateway_table(g))
    for run in g.get("runs", []):
        for name, prof in (run.get("profile") or {}).items():
            if isinstance(prof, dict) and prof.get("samples"):
                print(f"\nWEB_CONCURRENCY={run['web_concurrency']} {name}: {prof['samples']} samples at 100 Hz "
                      f"over {run['seconds']:g} s (py-spy; non-idle only)")
                print("  self:      " + "; ".join(f"{share:.0%} {frame}" for frame, share in prof["self"][:8]))
                print("  inclusive: " + "; ".join(f"{share:.0%} {frame}" for frame, share in prof["inclusive"]
                                                 if share < 0.8)[:1200])
    print(f"\nfull results: {out / 'gateway.json'}")
    return 0


def cmd_scaling(args) -> int:
    out = Path(args.out) if args.out else RESULTS / ("scaling-" + time.strftime("%Y%m%d-%H%M%S"))
    counts = [int(x) for x in args.workers.split(",")] if args.workers else list(range(1, 9))
    s = stub_bench.scaling(out / "logs", counts=counts, delay_ms=args.delay_ms, seconds=args.seconds)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps(s, indent=2))
    print(report.scaling_table(s))
    return 0


def cmd_quality(args) -> int:
    model = ensure_model(args.arch, args.model)
    q = quality.run(model, args.mode, Path(args.data) if args.data else None, args.threads, args.queries)
    if args.out:
        Path(args.out).write_text(json.dumps(q, indent=2))
    print(quality.markdown(q))
    return 1 if q.get("error") else 0


def cmd_peaks(args) -> int:
    print(json.dumps(measure_peaks(args.threads, args.seconds, 2048)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    run = sub.add_parser("run", help="the whole suite")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="W30 at c1/c8 (default)")
    size.add_argument("--full", action="store_true", help="W5/W30 at c1/4/8/32, W240 at c1/4, 8-worker scaling")
    size.add_argument("--smoke", action="store_true", help="tiny model, a few requests (the test suite's)")
    run.add_argument("--systems", help=f"comma-separated, default: {','.join(DEFAULT_SYSTEMS)}")
    run.add_argument("--service", action="append", default=[], metavar="NAME:VAR=VAL,...",
                     help="an extra service system with these worker settings, e.g. bf16:RERANKER_PRECISION=bf16 "
                          "(WORKERS=n sets the worker count); repeatable")
    run.add_argument("--workloads", help="comma-separated subset of W5,W30,W240 (with --concurrency)")
    run.add_argument("--concurrency", help="comma-separated concurrencies for every workload")
    run.add_argument("--requests-scale", type=float, default=1.0, help="scale the requests per point")
    run.add_argument("--threads", type=int, default=2, help="torch threads of every system (default 2)")
    run.add_argument("--workers", type=int, default=1, help="service workers (each with --threads threads)")
    run.add_argument("--arch", choices=["mxbai-base", "tiny"], help="model to build (default by preset)")
    run.add_argument("--model", help="use this model directory instead of building one")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--interleave", action="store_true",
                     help="keep every system up and send the c=1 requests round-robin (fairer on a busy machine; "
                          "needs memory for all systems at once)")
    run.add_argument("--out", help="output directory (default benchmarks/results/<time>)")
    run.add_argument("--no-peaks", action="store_true")
    run.add_argument("--no-gateway", action="store_true")
    run.add_argument("--no-scaling", action="store_true")
    run.add_argument("--install-wrk", action="store_true", help="apt-get install wrk if it is missing (root)")
    run.add_argument("--quality-mode", action="append", default=[], metavar="NAME:VAR=VAL,...")
    run.add_argument("--quality-data", help="JSONL of {query, candidates} for the quality comparison")
    run.set_defaults(fn=cmd_run)

    gw = sub.add_parser("gateway", help="gateway overhead with stub workers (wrk)")
    gw.add_argument("--web-concurrency", default="1,2")
    gw.add_argument("--stub-workers", type=int, default=2)
    gw.add_argument("--connections", type=int, default=32)
    gw.add_argument("--seconds", type=float, default=15)
    gw.add_argument("--install-wrk", action="store_true")
    gw.add_argument("--profile", action="store_true",
                    help="also profile gateway, broker and workers with py-spy during a second run")
    gw.add_argument("--out")
    gw.set_defaults(fn=cmd_gateway)

    sc = sub.add_parser("scaling", help="throughput vs stub workers, W240 over k workers")
    sc.add_argument("--workers", help="comma-separated counts (default 1..8)")
    sc.add_argument("--delay-ms", type=float, default=10.0)
    sc.add_argument("--seconds", type=float, default=8.0)
    sc.add_argument("--out")
    sc.set_defaults(fn=cmd_scaling)

    qu = sub.add_parser("quality", help="compare scoring modes against fp32")
    qu.add_argument("--mode", action="append", default=[], metavar="NAME:VAR=VAL,...")
    qu.add_argument("--data", help="JSONL: {\"query\": str, \"candidates\": [str]} per line (default: built-in)")
    qu.add_argument("--queries", type=int, default=24, help="built-in queries")
    qu.add_argument("--threads", type=int, default=2)
    qu.add_argument("--arch", default="mxbai-base", choices=["mxbai-base", "tiny"])
    qu.add_argument("--model")
    qu.add_argument("--out", help="write the JSON here")
    qu.set_defaults(fn=cmd_quality)

    pk = sub.add_parser("peaks", help="GEMM peaks of this machine (fp32, bf16, int8)")
    pk.add_argument("--threads", type=int, default=2)
    pk.add_argument("--seconds", type=float, default=3.0)
    pk.set_defaults(fn=cmd_peaks)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
