"""The reference: CrossEncoder.predict in this process, one request after another.

Run by the suite as its own process (so that its CPU and memory are measured like a server's):
    python -m benchmarks.inprocess MODEL_DIR --threads 2 [--seed 0]
It loads the model, warms it up, prints {"ready": true, "load_s": ...} and then answers lines on stdin:
"WORKLOAD START COUNT" runs requests START..START+COUNT-1 of the workload's seeded pool (the same
requests the HTTP systems get) and prints {"latencies_s": [...]}; EOF ends it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

POOL = 64  # requests per workload, as the suite's HTTP load uses


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    t0 = time.perf_counter()
    import torch
    from sentence_transformers import CrossEncoder

    from .workloads import make_requests

    torch.set_num_threads(args.threads)
    model = CrossEncoder(args.model, device="cpu")
    warm = make_requests("W5", 1, args.seed + 1000)[0]
    model.predict([(warm.query, s) for s in warm.sentences], batch_size=args.batch_size, show_progress_bar=False)
    pools: dict[str, list] = {}
    print(json.dumps({"ready": True, "pid": os.getpid(), "load_s": round(time.perf_counter() - t0, 2),
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        workload, start, count = line.split()
        pool = pools.setdefault(workload, make_requests(workload, POOL, args.seed))
        latencies = []
        for i in range(int(start), int(start) + int(count)):
            req = pool[i % POOL]
            t = time.perf_counter()
            model.predict([(req.query, s) for s in req.sentences], batch_size=args.batch_size, show_progress_bar=False)
            latencies.append(time.perf_counter() - t)
        print(json.dumps({"latencies_s": latencies}), flush=True)


if __name__ == "__main__":
    main()
