"""The reference: CrossEncoder.predict in this process, one request after another.

Run by the suite as its own process (so that its CPU and memory are measured like a server's):
    python -m benchmarks.inprocess MODEL_DIR --threads 2 --workload W30 --requests 3 [--seed 0]
It prints one JSON line: {"load_s", "latencies_s": [...], "rss_mb"}; it waits for a line on stdin
before the timed requests, so that the caller can start its monitor first.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--workload", default="W30")
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch
    from sentence_transformers import CrossEncoder

    from .workloads import make_requests

    torch.set_num_threads(args.threads)
    model = CrossEncoder(args.model, device="cpu")
    requests = make_requests(args.workload, args.requests + 1, args.seed)
    warm = requests.pop()
    model.predict([(warm.query, s) for s in warm.sentences][:4], batch_size=args.batch_size, show_progress_bar=False)
    load_s = time.perf_counter() - t0
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    latencies = []
    for req in requests:
        t = time.perf_counter()
        model.predict([(req.query, s) for s in req.sentences], batch_size=args.batch_size, show_progress_bar=False)
        latencies.append(time.perf_counter() - t)
    print(json.dumps({"load_s": round(load_s, 2), "latencies_s": latencies, "threads": torch.get_num_threads()}),
          flush=True)


if __name__ == "__main__":
    main()
