"""Measure each scorer mode against exact CrossEncoder.predict (torch fp32): drift, order agreement, speed.

    python -m benchmarks.drift --build mxbai-base        # all modes this install can run
    python -m benchmarks.drift --model DIR --modes torch:fp32,torch:bf16 --threads 2 --rounds 7

Modes are `backend:precision[:batch_size[:batch_tokens]]` (`auto:fast`, `auto:exact`: what a worker
would choose, worker/selection.py), plus `predict`: plain
`CrossEncoder.predict(batch_size=32)` in fp32, the reference for both drift and speed. All modes are
loaded first, then timed in rounds: each round is a new request (W30 by default, as in benchmarks/)
that every mode scores in turn, so that load from other processes hits them alike. The speed ratio is
the median over rounds of predict's time / the mode's time, by wall clock and by process CPU time
(the latter is steadier on a busy machine, but counts threads that spin-wait).

Drift is max |score - predict's score| over several 30-pair requests of mixed lengths; order agreement
is the share of sentence pairs within a request that keep their relative order (1.0: same ranking).
With random weights (`--build`) drift is only indicative of a trained model's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MODES = ["predict", "torch:fp32", "torch:bf16", "torch:int8", "onnx:fp32", "onnx:int8",
                 "openvino:fp32", "openvino:bf16", "openvino:int8"]


def request(rng: random.Random, n: int, words: tuple[int, int], query_words: int = 6) -> list[tuple[str, str]]:
    """One query and n sentences of words[0]..words[1] words (about one token a word)."""
    from devkit.models import sample_text, vocabulary

    vocab = vocabulary()
    query = sample_text(rng, query_words, vocab)
    return [(query, sample_text(rng, rng.randint(*words), vocab)) for _ in range(n)]


def workloads(pairs: int, drift_requests: int, rounds: int, seed: int = 0):
    """Timed requests (the benchmarks' W30/W240 kind: ~8-word query, 10-40-word sentences; a new one each
    round) and drift requests (30 pairs of 4-120 words, plus the first timed request)."""
    from benchmarks.workloads import make_requests

    name = {30: "W30", 240: "W240", 5: "W5"}.get(pairs)
    if name:
        timed = [[(r.query, s) for s in r.sentences] for r in make_requests(name, rounds, seed=seed)]
    else:
        rng = random.Random(seed)
        timed = [request(rng, pairs, (10, 40), 8) for _ in range(rounds)]
    rng = random.Random(seed + 1)
    drift = [timed[0][:30]] + [request(rng, 30, (4, 120)) for _ in range(drift_requests)]
    return timed, drift


def order_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of pairs (i, j) with ref[i] != ref[j] that got orders the same way."""
    i, j = np.triu_indices(len(ref), 1)
    d_ref, d_got = np.sign(ref[i] - ref[j]), np.sign(got[i] - got[j])
    keep = d_ref != 0
    return float((d_ref[keep] == d_got[keep]).mean()) if keep.any() else 1.0


class Predict:
    """The reference: CrossEncoder.predict as the original service called it."""

    def __init__(self, model: str, threads: int, batch_size: int = 32) -> None:
        from worker.cpu import set_threads
        from worker.loading import load_cross_encoder

        set_threads(threads)
        self.model = load_cross_encoder(model, None)
        self.batch_size = batch_size
        self.info = {"backend": "predict", "precision": "fp32", "batch_size": batch_size}

    def score(self, pairs):
        return np.asarray(self.model.predict(list(pairs), batch_size=self.batch_size, show_progress_bar=False),
                          dtype=np.float32)


def load_mode(spec: str, model: str, threads: int, export_dir: str | None):
    from shared.settings import Settings
    from worker.runtime import ScorerError
    from worker.scorer import load_scorer

    if spec == "predict":
        return Predict(model, threads)
    backend, precision, *rest = spec.split(":")
    batch_size = int(rest[0]) if rest else 32
    batch_tokens = int(rest[1]) if len(rest) > 1 else Settings.model_fields["batch_tokens"].default
    settings = Settings(model=model, backend=backend, precision=precision, num_threads=threads,
                        batch_size=batch_size, batch_tokens=batch_tokens, export_dir=export_dir)
    try:
        return load_scorer(settings)  # auto/exact/fast: the mode the worker would choose
    except ScorerError as exc:
        print(f"skip {spec}: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model", help="a CrossEncoder directory or hub name")
    where.add_argument("--build", choices=["tiny", "mxbai-base"],
                       help="build a random-weight model of this architecture (devkit.models) and use it")
    parser.add_argument("--models-dir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "reranker-models"))
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=30, help="pairs in the timed request")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--drift-requests", type=int, default=6)
    parser.add_argument("--export-dir", default=None, help="export cache (default: ~/.cache/reranker/exports)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    model = args.model
    if args.build:
        from devkit.models import build_model

        model = str(build_model(Path(args.models_dir) / args.build, args.build))
    specs = [s.strip() for s in args.modes.split(",") if s.strip()]
    if "predict" not in specs:
        specs.insert(0, "predict")
    timed, drift = workloads(args.pairs, args.drift_requests, args.rounds)

    scorers = {}
    for spec in specs:
        started = time.perf_counter()
        scorer = load_mode(spec, model, args.threads, args.export_dir)
        if scorer is None:
            continue
        scorer.score(timed[0][:4])  # warm-up
        scorers[spec] = scorer
        print(f"loaded {spec} in {time.perf_counter() - started:.1f} s", file=sys.stderr)

    ref = [scorers["predict"].score(r) for r in drift]
    results: dict[str, dict] = {}
    for spec, scorer in scorers.items():
        got = [scorer.score(r) for r in drift]
        results[spec] = {
            "max_abs_diff": float(max(np.abs(g - r).max() for g, r in zip(got, ref))),
            "mean_abs_diff": float(np.mean(np.concatenate([np.abs(g - r) for g, r in zip(got, ref)]))),
            "order_agreement": float(np.mean([order_agreement(r, g) for g, r in zip(got, ref)])),
            "same_top1": sum(int(np.argmax(g) == np.argmax(r)) for g, r in zip(got, ref)),
            "requests": len(ref),
            "times": [],
            "cpu_times": [],
        }

    for k, pairs in enumerate(timed):
        order = list(scorers.items())
        for spec, scorer in order if k % 2 == 0 else order[::-1]:
            gc.collect()
            time.sleep(0.2)  # let other runtimes' spinning threads go idle
            wall, cpu = time.perf_counter(), time.process_time()
            scorer.score(pairs)
            results[spec]["times"].append(time.perf_counter() - wall)
            results[spec]["cpu_times"].append(time.process_time() - cpu)
    for spec, r in results.items():
        r["median_s"] = statistics.median(r["times"])
        r["speedup"] = statistics.median(b / t for b, t in zip(results["predict"]["times"], r["times"]))
        r["cpu_speedup"] = statistics.median(b / t for b, t in zip(results["predict"]["cpu_times"], r["cpu_times"]))

    tokens = statistics.mean(scorers["predict"].model.preprocess(p)["attention_mask"].sum().item() for p in timed)
    print(f"\nmodel {model}; timed: {args.rounds} requests of {args.pairs} pairs (mean {tokens:.0f} tokens), "
          f"each run by every mode in turn; {args.threads} threads; drift over {len(drift)} requests x 30 pairs\n")
    print("| mode | median time | speed vs predict (wall) | (CPU time) | max abs drift | mean abs drift "
          "| order agreement | same top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    for spec, r in results.items():
        print(f"| {spec} | {r['median_s']:.3f} s | {r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x | "
              f"{r['max_abs_diff']:.1e} | {r['mean_abs_diff']:.1e} | {r['order_agreement']:.4f} | "
              f"{r['same_top1']}/{r['requests']} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": model, "tokens": tokens, "results": results}, indent=1))
    return results


if __name__ == "__main__":
    main()
