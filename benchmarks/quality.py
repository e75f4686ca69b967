"""Quality of scoring modes against torch fp32: max |delta score|, Spearman, top-10 overlap.

A mode is worker settings (NAME or NAME:VAR=VALUE,...), e.g. `bf16:RERANKER_PRECISION=bf16` or
`ov:RERANKER_BACKEND=openvino`; each is loaded with the worker's own `load_scorer` in a process of
its own (so that a mode that fails to load is reported, not fatal) and scores the same pairs.

Data: a JSONL file, one query per line: {"query": str, "candidates": [str, ...]} ("sentences" or
"documents" are accepted for "candidates"); or the built-in set (seeded W30-like queries).

    python -m benchmarks quality --mode bf16:RERANKER_PRECISION=bf16 [--data my.jsonl]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devkit.procs import ROOT, clean_env, python
from worker.ranking import spearman, top_k_overlap

from .systems import EXPORTS
from .workloads import make_requests


REFERENCE = {"RERANKER_BACKEND": "torch", "RERANKER_PRECISION": "fp32"}  # predict's own computation


def load_jsonl(path: Path) -> list[tuple[str, list[str]]]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        cands = row.get("candidates", row.get("sentences", row.get("documents")))
        if not isinstance(row.get("query"), str) or not isinstance(cands, list) or not cands:
            raise ValueError(f"{path}:{n}: expected {{\"query\": str, \"candidates\": [str, ...]}}")
        out.append((row["query"], [c if isinstance(c, str) else c.get("text", "") for c in cands]))
    return out


def builtin(n_queries: int = 12, seed: int = 21) -> list[tuple[str, list[str]]]:
    return [(r.query, r.sentences) for r in make_requests("W30", n_queries, seed)]


def parse_mode(text: str) -> tuple[str, dict[str, str]]:
    name, _, rest = text.partition(":")
    env = dict(item.split("=", 1) for item in rest.split(",") if item.strip())
    return name, {k.strip(): v.strip() for k, v in env.items()}


def compare(ref: list[np.ndarray], other: list[np.ndarray]) -> dict:
    deltas = [np.abs(np.asarray(r, np.float64) - np.asarray(o, np.float64)) for r, o in zip(ref, other)]
    rho = [spearman(r, o) for r, o in zip(ref, other)]
    top = [top_k_overlap(r, o) for r, o in zip(ref, other)]
    return {
        "max_abs_delta": float(max(d.max() for d in deltas)),
        "mean_abs_delta": float(np.mean(np.concatenate(deltas))),
        "spearman_mean": round(float(np.mean(rho)), 5),
        "spearman_min": round(float(np.min(rho)), 5),
        "top10_overlap_mean": round(float(np.mean(top)), 4),
        "top10_overlap_min": round(float(np.min(top)), 4),
    }


def score_in_subprocess(model: Path, env: dict[str, str], data: list[tuple[str, list[str]]], threads: int,
                        timeout: float = 1800) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(data))
        full = clean_env(RERANKER_MODEL=str(model), NUM_THREADS=str(threads), RERANKER_EXPORT_DIR=str(EXPORTS), **env)
        proc = subprocess.run([python(), "-m", "benchmarks.quality", "--score", str(inp), str(out)], cwd=ROOT,
                              env=full, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not out.is_file():
            lines = (proc.stderr or proc.stdout or "").strip().splitlines()
            return {"error": f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"}
        return json.loads(out.read_text())


def _score_main(inp: Path, out: Path) -> None:
    """In the child: load the worker's scorer from the environment and score every query."""
    from shared.settings import load_or_exit
    from worker.scorer import load_scorer

    data = json.loads(inp.read_text())
    settings = load_or_exit()
    t = time.perf_counter()
    scorer = load_scorer(settings)
    load_s = time.perf_counter() - t
    scorer.score([(data[0][0], data[0][1][0])])  # warm-up
    scores, t = [], time.perf_counter()
    for query, cands in data:
        scores.append(np.asarray(scorer.score([(query, c) for c in cands]), dtype=np.float64).tolist())
    out.write_text(json.dumps({"scores": scores, "score_s": time.perf_counter() - t, "load_s": load_s,
                               "info": scorer.info}))


def run(model: Path, modes: list[str], data_path: Path | None, threads: int, n_builtin: int = 12) -> dict:
    data = load_jsonl(data_path) if data_path else builtin(n_builtin)
    source = str(data_path) if data_path else f"built-in: {len(data)} seeded W30 queries"
    ref = score_in_subprocess(model, REFERENCE, data, threads)
    result = {"data": source, "queries": len(data), "pairs": sum(len(c) for _, c in data), "reference": "fp32",
              "modes": []}
    if "error" in ref:
        result["error"] = f"fp32 reference failed: {ref['error']}"
        return result
    ref_scores = [np.asarray(s) for s in ref["scores"]]
    result["modes"].append({"mode": "fp32", "env": REFERENCE, "score_s": round(ref["score_s"], 3), "speedup": 1.0,
                            **compare(ref_scores, ref_scores)})
    for text in modes:
        name, env = parse_mode(text)
        got = score_in_subprocess(model, env, data, threads)
        row = {"mode": name, "env": env}
        if "error" in got:
            row["error"] = got["error"]
        else:
            row["score_s"] = round(got["score_s"], 3)
            row["speedup"] = round(ref["score_s"] / got["score_s"], 2)
            row["info"] = got.get("info")
            row.update(compare(ref_scores, [np.asarray(s) for s in got["scores"]]))
        result["modes"].append(row)
    return result


def markdown(q: dict) -> str:
    lines = [f"Quality against torch fp32 on {q['data']} ({q['queries']} queries, {q['pairs']} pairs):", "",
             "| mode | settings | time | × fp32 | max abs Δ | mean abs Δ | Spearman mean/min | top-10 overlap mean/min |",
             "|---|---|---|---|---|---|---|---|"]
    for m in q["modes"]:
        env = ", ".join(f"{k}={v}" for k, v in m["env"].items()) or "(default)"
        if "error" in m:
            lines.append(f"| {m['mode']} | {env} | failed: {m['error'][:150]} | | | | | |")
            continue
        lines.append(f"| {m['mode']} | {env} | {m['score_s']:.2f} s | {m['speedup']:.2f} | {m['max_abs_delta']:.2e} | "
                     f"{m['mean_abs_delta']:.2e} | {m['spearman_mean']:.4f} / {m['spearman_min']:.4f} | "
                     f"{m['top10_overlap_mean']:.2f} / {m['top10_overlap_min']:.2f} |")
    if q.get("error"):
        lines.append(f"\n{q['error']}")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--score"]:
        _score_main(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print("use: python -m benchmarks quality ...", file=sys.stderr)
        sys.exit(2)
