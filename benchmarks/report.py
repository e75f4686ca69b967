"""The suite's outputs: results.json, results.md (markdown tables) and latency.png."""

from __future__ import annotations

import json
from pathlib import Path


def _f(x, fmt: str = "{:.1f}", none: str = "–") -> str:
    return none if x is None else fmt.format(x)


def _rss(row: dict) -> str:
    rss = row.get("rss_mb") or {}
    if "gateway" in rss:
        return f"{rss['gateway']:.0f} + {rss.get('worker', 0):.0f}"
    return " + ".join(f"{v:.0f}" for v in rss.values()) or "–"


def _cpu(row: dict) -> str:
    cpu = row.get("cpu_cores") or {}
    if "gateway" in cpu:
        return f"{cpu['gateway']:.2f} + {cpu.get('worker', 0):.2f}"
    return " + ".join(f"{v:.2f}" for v in cpu.values()) or "–"


def comparison_table(res: dict) -> str:
    lines = ["| system | load | c | req | p50 ms | p90 ms | p99 ms | pairs/s | × ref | CPU cores | machine CPU | "
             "RSS MB | GFLOP/s | % peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res.get("results", []):
        if row.get("skipped") or row.get("error"):
            continue
        lines.append(
            f"| {row['system']} | {row['workload']} | {row['concurrency']} | {row['requests']}"
            f"{'' if not row.get('errors') else ' (' + str(row['errors']) + ' err)'} | {_f(row.get('p50_ms'), '{:.0f}')} | "
            f"{_f(row.get('p90_ms'), '{:.0f}')} | {_f(row.get('p99_ms'), '{:.0f}')} | {_f(row.get('pairs_per_s'), '{:.2f}')} | "
            f"{_f(row.get('vs_reference'), '{:.2f}')} | {_cpu(row)} | {_f(row.get('machine_cpu_busy'), '{:.0%}')} | "
            f"{_rss(row)} | {_f(row.get('gflops'), '{:.3g}')} | "
            f"{_f(row.get('peak_fraction'), '{:.0%}')} {row.get('peak_key', '')} |")
    notes = [f"- {s['system']}: {s.get('skipped') or s.get('error')}" for s in res.get("systems", [])
             if s.get("skipped") or s.get("error")]
    if notes:
        lines += ["", "Not measured:", *notes]
    return "\n".join(lines)


def systems_table(res: dict) -> str:
    """The service systems: the mode each one's workers run (chosen on this machine where asked) and
    their cold start, `python -m worker` to READY with warm caches."""
    rows = [s for s in res.get("systems", []) if s.get("kind") == "service" and not s.get("skipped")]
    if not rows:
        return ""
    lines = ["| system | settings | mode run | how chosen | worker start to READY (s) |", "|---|---|---|---|---|"]
    for s in rows:
        mode = s.get("mode") or {}
        env = ", ".join(f"{k}={v}" for k, v in (s.get("env") or {}).items()) or "defaults"
        starts = ", ".join(f"{t:.2f}" for t in s.get("cold_start_s", [])) or s.get("cold_start_error", "–")[:80]
        lines.append(f"| {s['system']} | {env} | {mode.get('backend', '?')} {mode.get('precision', '')} | "
                     f"{mode.get('why', s.get('error', '–'))[:160]} | {starts} |")
    return "\n".join(lines)


def gateway_table(g: dict) -> str:
    if not g or g.get("skipped"):
        return f"Gateway overhead: {g.get('skipped', 'not run') if g else 'not run'}"
    lines = [f"Gateway overhead: stub workers (no compute), {g['workload']} body, wrk, concurrency "
             f"{g['runs'][0]['connections'] if g['runs'] else '?'} (target: >= 1,500 req/s, p99 <= 25 ms):", "",
             "| WEB_CONCURRENCY | stub workers | req/s | p50 ms | p90 ms | p99 ms | non-2xx | gateway+broker CPU | "
             "workers CPU | wrk CPU | machine CPU | gateway RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in g["runs"]:
        if r.get("error"):
            lines.append(f"| {r.get('web_concurrency')} | | failed: {r['error'][:100]} |||||||||")
            continue
        lines.append(f"| {r['web_concurrency']} | {r['stub_workers']} | {r['requests_per_s']:.0f} | {_f(r['p50_ms'])} | "
                     f"{_f(r['p90_ms'])} | {_f(r['p99_ms'])} | {r['non_2xx']} | {r['cpu_cores']['gateway']:.2f} | "
                     f"{r['cpu_cores']['worker']:.2f} | {r['loadgen_cpu_cores']:.2f} | {r['machine_cpu_busy']:.0%} | "
                     f"{r['rss_mb']['gateway']:.0f} |")
    return "\n".join(lines)


def scaling_table(s: dict) -> str:
    if not s or s.get("skipped"):
        return f"Scaling: {s.get('skipped', 'not run') if s else 'not run'}"
    lines = [f"Scaling: stub workers at {s['delay_ms_per_pair']:g} ms per pair (ideal {s['ideal_pairs_per_s_per_worker']:.0f} "
             "pairs/s per worker); W30 closed loop at 4·N concurrency; one W240 request over N idle workers "
             "(targets: speedup >= 0.9·N; W240 time <= 1.25 × t1/N):", "",
             "| workers | pairs/s | speedup | speedup/N | p50 ms | p99 ms | W240 ms | W240 / (t1/N) |",
             "|---|---|---|---|---|---|---|---|"]
    for p in s["points"]:
        lines.append(f"| {p['workers']} | {_f(p['pairs_per_s'])} | {_f(p['speedup'], '{:.2f}')} | "
                     f"{_f(p['speedup_per_worker'], '{:.2f}')} | {_f(p['p50_ms'], '{:.0f}')} | {_f(p['p99_ms'], '{:.0f}')} | "
                     f"{p['w240_ms']:.0f} | {p['w240_vs_ideal']:.2f} |")
    return "\n".join(lines)


def targets_table(targets: list[dict]) -> str:
    if not targets:
        return ""
    lines = ["| target | measured | goal | met |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t['name']} | {t['value']} | {t['goal']} | {'yes' if t['ok'] else 'NO'} |")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    from .quality import markdown as quality_md

    m = res["meta"]
    out = [f"# Benchmark results ({m['preset']}, {m['date']})", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, CPU class {m.get('cpu_class', '?')} "
           f"(instruction sets: {' '.join(m.get('cpu_flags') or []) or 'none of note'}); torch {m.get('torch')}; commit {m['commit']}; "
           f"load average {m['loadavg_before']:.2f} before, {m.get('loadavg_after', 0):.2f} after; "
           f"CPU {m.get('busy_before', 0):.0%} busy in the 5 s before the start "
           f"({'quiet' if m.get('busy_before', 1) < 0.1 else 'NOT quiet: other work was running'}).", "",
           f"Model: {res['model']['arch']} ({res['model']['path']}); workers: {m['threads']} threads each.", ""]
    pk = res.get("peaks") or {}
    if pk:
        out += [f"GEMM peaks on {pk.get('threads')} threads: fp32 {_f(pk.get('fp32'))} GFLOP/s, bf16 {_f(pk.get('bf16'))} "
                f"GFLOP/s, int8 {_f(pk.get('int8'))} GOP/s.", ""]
    if res.get("workloads"):
        out += ["| workload | pairs | words | text tokens | tokens/word | pair tokens | padded (predict) | GFLOP/request |",
                "|---|---|---|---|---|---|---|---|"]
        for name, w in res["workloads"].items():
            out.append(f"| {name} | {w['pairs']} | {w['words']:.0f} | {w['text_tokens']:.0f} | {w['tokens_per_word']:.2f} | "
                       f"{w['pair_tokens']:.0f} | {w['padded_tokens']:.0f} | {w['gflop_per_request']:.1f} |")
        out.append("")
    out += [systems_table(res), "", comparison_table(res), "", "CPU cores: cores busy on average in the system's own processes "
            "(service: gateway+broker + workers); RSS: peak, same split. GFLOP/s: useful model FLOPs "
            "(no padding) per second; % peak: of the GEMM peak for the system's precision.", ""]
    if "gateway_overhead" in res:
        out += [gateway_table(res["gateway_overhead"]), ""]
    if "scaling" in res:
        out += [scaling_table(res["scaling"]), ""]
    if res.get("quality"):
        out += [quality_md(res["quality"]), ""]
    if res.get("targets"):
        out += ["Targets (ratios measured in this run):", "", targets_table(res["targets"]), ""]
    return "\n".join(out)


def plot(res: dict, path: Path) -> str | None:
    """Latency (p50, with p90..p99 band) and pairs/s vs concurrency, per system and workload."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no PNG (pip install matplotlib)"
    rows = [r for r in res.get("results", []) if r.get("p50_ms") is not None]
    workloads = [w for w in res.get("workloads", {}) if any(r["workload"] == w for r in rows)]
    if not workloads:
        return "no results to plot"
    fig, axes = plt.subplots(2, len(workloads), figsize=(6 * len(workloads), 8), squeeze=False)
    for col, w in enumerate(workloads):
        systems = sorted({r["system"] for r in rows if r["workload"] == w}, key=lambda s: [r["system"] for r in rows].index(s))
        for name in systems:
            pts = sorted((r for r in rows if r["workload"] == w and r["system"] == name), key=lambda r: r["concurrency"])
            c = [p["concurrency"] for p in pts]
            if name == "inprocess":  # serial: its throughput is the same at any concurrency
                axes[1][col].axhline(pts[0]["pairs_per_s"], color="black", linestyle=":", label="inprocess (reference)")
            style = dict(marker="o", linestyle="--" if len(c) == 1 else "-")
            line, = axes[0][col].plot(c, [p["p50_ms"] / 1000 for p in pts], label=name, **style)
            axes[0][col].fill_between(c, [p["p90_ms"] / 1000 for p in pts], [p["p99_ms"] / 1000 for p in pts],
                                      color=line.get_color(), alpha=0.15)
            axes[1][col].plot(c, [p["pairs_per_s"] for p in pts], label=name, color=line.get_color(), **style)
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency (closed loop)")
            ax.grid(True, alpha=0.3)
        axes[0][col].set_yscale("log")
        axes[0][col].set_title(f"{w}: latency p50 (band p90..p99)")
        axes[0][col].set_ylabel("seconds")
        axes[1][col].set_title(f"{w}: throughput")
        axes[1][col].set_ylabel("pairs/s")
        axes[0][col].legend(fontsize=8)
    fig.suptitle(f"Reranker systems, {res['model']['arch']}, {res['meta']['threads']} threads, {res['meta']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def write(res: dict, out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "png": out_dir / "latency.png"}
    note = plot(res, paths["png"])
    if note:
        res.setdefault("notes", []).append(note)
        paths.pop("png")
    paths["json"].write_text(json.dumps(res, indent=2, default=str))
    paths["markdown"].write_text(markdown(res))
    return paths
