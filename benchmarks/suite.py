"""The benchmark suite's orchestration: build the model, start each system, measure every point, add the
stub benchmarks and the quality comparison, compute the targets and write the report. The command line
is benchmarks/__main__.py; each `cmd_*` here is one of its commands.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from devkit.models import build_model
from devkit.procs import ROOT, Monitor, busy_share, loadavg, python

from . import flops, loadgen, quality, report, stub_bench, systems
from .targets import compute_targets
from .workloads import WORKLOADS, make_requests, token_stats

MODELS = ROOT / "benchmarks" / ".models"
RESULTS = ROOT / "benchmarks" / "results"
# The service twice: as installed (RERANKER_PRECISION=exact) and in the fastest mode it picks on this machine.
DEFAULT_SYSTEMS = ["inprocess", "original", "service", "service-fast:RERANKER_PRECISION=fast", "infinity-torch",
                   "infinity-onnx", "litserve"]

# Per preset: workloads with their concurrencies, requests per point (n = max(base, mult * c)), and the
# sizes of the stub benchmarks.
PRESETS = {
    "smoke": dict(arch="tiny", workloads={"W5": [1, 2]}, base=2, mult=1, max_point_s=60, inproc_n=2,
                  peaks_s=0.1, peaks_n=512, gateway_s=1, gateway_wc=[1], scaling=[1, 2], scaling_s=0.5,
                  scaling_delay=2.0, w240_repeats=1, quality_queries=2, cold_starts=1,
                  systems=["inprocess", "original", "service"]),
    "quick": dict(arch="mxbai-base", workloads={"W30": [1, 8]}, base=3, mult=1.5, max_point_s=240, inproc_n=3,
                  peaks_s=2.0, peaks_n=2048, gateway_s=8, gateway_wc=[1, 2], scaling=[1, 2, 4, 8], scaling_s=4.0,
                  scaling_delay=10.0, w240_repeats=2, quality_queries=8, cold_starts=3, systems=DEFAULT_SYSTEMS),
    "full": dict(arch="mxbai-base", workloads={"W5": [1, 4, 8, 32], "W30": [1, 4, 8, 32], "W240": [1, 4]},
                 base=4, mult=2, max_point_s=300, inproc_n=4, peaks_s=3.0, peaks_n=2048, gateway_s=15,
                 gateway_wc=[1, 2], scaling=list(range(1, 9)), scaling_s=8.0, scaling_delay=10.0, w240_repeats=3,
                 quality_queries=24, cold_starts=3, systems=DEFAULT_SYSTEMS),
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


def cpu_flags() -> list[str]:
    """The flags that decide which kernels, so which modes, run fast here."""
    from worker.cpu import ISA_FLAGS
    from worker.cpu import cpu_flags as all_flags

    flags = all_flags()
    return [f for f in ISA_FLAGS if f in flags]


def cpu_class() -> str:
    from worker.cpu import cpu_class as of_flags

    return of_flags()


def cpu_model() -> str:
    from worker.cpu import cpu_model as named

    return named() if named() != "unknown" else platform.processor() or "unknown"


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
    if spec.kind == "service":
        sysrow["mode"] = handle.chosen_mode()
        if sysrow["mode"]:
            say(f"{spec.name}: {sysrow['mode']['backend']} {sysrow['mode']['precision']} ({sysrow['mode']['why']})")
    return sysrow, handle


def measure_cold_starts(handle, sysrow: dict, runs: int) -> None:
    """`python -m worker` to READY, `runs` times, with the caches the system's first start filled."""
    if handle.spec.kind != "service" or runs < 1:
        return
    times = []
    try:
        for _ in range(runs):
            times.append(round(handle.cold_start(), 2))
    except Exception as exc:  # noqa: BLE001 - reported, not fatal
        sysrow["cold_start_error"] = str(exc)[:1500]
    if times:
        sysrow["cold_start_s"] = times
        say(f"{handle.spec.name}: worker start to READY {', '.join(f'{t:.2f}' for t in times)} s")


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
            for h, sysrow in zip(handles, [r for r in sysrows if "info" in r]):
                measure_cold_starts(h, sysrow, preset["cold_starts"])
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
                measure_cold_starts(h, sysrow, preset["cold_starts"])
            finally:
                h.stop()
    return sysrows, rows


def add_peak_fractions(res: dict, specs: list[systems.SystemSpec]) -> None:
    by_name = {s.name: s for s in specs}
    modes = {s["system"]: s["mode"] for s in res.get("systems", []) if s.get("mode")}
    for row in res["results"]:
        spec = by_name.get(row.get("system"))
        if spec is None or not row.get("gflops"):
            continue
        env = spec.precision_env()
        if row["system"] in modes:  # the precision the workers chose (exact/fast name a choice, not a precision)
            env = {**env, "RERANKER_PRECISION": modes[row["system"]]["precision"]}
        key, peak = flops.peak_for(env, res.get("peaks") or {})
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
                 "cpu": cpu_model(), "cpu_class": cpu_class(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "python": platform.python_version(),
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
    print("\n" + stub_bench.mixed_table(s))
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
