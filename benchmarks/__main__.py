"""The benchmark suite: one command, on a fresh machine (`reranker bench ...` runs the same).

    bash benchmarks/setup.sh                            # fresh clone: .venv, extras, model, peers, warm-up
    .venv/bin/python -m benchmarks setup                # the same for an existing .venv
    .venv/bin/python -m benchmarks run --quick          # W30 at c1/c8, all systems, ~10 min
    .venv/bin/python -m benchmarks run --full           # W5/W30 at c1/4/8/32 and W240, ~40 min
    .venv/bin/python -m benchmarks run --quick --service bf16:RERANKER_PRECISION=bf16
    .venv/bin/python -m benchmarks gateway              # stub gateway overhead only (wrk)
    .venv/bin/python -m benchmarks scaling              # stub scaling only
    .venv/bin/python -m benchmarks quality --mode bf16:RERANKER_PRECISION=bf16 [--data q.jsonl]
    .venv/bin/python -m benchmarks peaks                # GEMM peaks only
    .venv/bin/python -m benchmarks soak --minutes 5     # stub service under steady load: errors, memory growth
    .venv/bin/python -m benchmarks cache --overlap 0.8  # the score cache on search sessions (stub workers)

Everything is written under benchmarks/results/<time>/ (results.json, results.md, latency.png,
logs/), and benchmarks/results/latest points there. The model is built on first use under
benchmarks/.models/ (random weights, the real architecture). Peers without a venv are skipped
with a note. Targets are ratios of this run; nothing here asserts on timings.

This module is the command line; benchmarks/suite.py runs the commands, benchmarks/targets.py
judges the results.
"""

from __future__ import annotations

import argparse
import sys

from .cache_bench import cmd_cache
from .soak import cmd_soak
from .setup import cmd_setup
from .suite import DEFAULT_SYSTEMS, cmd_gateway, cmd_peaks, cmd_quality, cmd_run, cmd_scaling


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    st = sub.add_parser("setup", help="install what the suite needs and warm the service up (benchmarks/setup.py)")
    st.add_argument("--no-install", action="store_true", help="skip pip (the extras are installed)")
    st.add_argument("--no-peers", action="store_true", help="skip the peers' venvs (they are then skipped in runs)")
    st.add_argument("--no-warm", action="store_true", help="skip the service warm-up (exports, mode choice)")
    st.add_argument("--install-wrk", action="store_true", help="apt-get install wrk if it is missing (root)")
    st.add_argument("--arch", default="mxbai-base", choices=["mxbai-base", "tiny"])
    st.add_argument("--threads", type=int, default=2, help="worker threads the suite will run (default 2)")
    st.set_defaults(fn=cmd_setup)

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

    so = sub.add_parser("soak", help="a bounded soak with stub workers: throughput, errors, memory growth")
    so.add_argument("--minutes", type=float, default=5.0, help="how long the load runs (it stops by itself)")
    so.add_argument("--workers", type=int, default=2)
    so.add_argument("--concurrency", type=int, default=8)
    so.add_argument("--delay-ms", type=float, default=2.0, help="stub compute per pair")
    so.add_argument("--workload", default="W30", choices=["W5", "W30", "W240"])
    so.add_argument("--web-concurrency", type=int, default=1)
    so.add_argument("--out")
    so.set_defaults(fn=cmd_soak)

    ca = sub.add_parser("cache", help="the score cache on a search session's pattern: pairs/s cached vs not")
    ca.add_argument("--overlap", type=float, default=0.8, help="share of a list kept from the session's previous one")
    ca.add_argument("--pool", type=int, default=0,
                    help="first-stage candidates a session's lists are drawn from (0: each new candidate is new)")
    ca.add_argument("--sessions", type=int, default=8)
    ca.add_argument("--lists", type=int, default=10, help="candidate lists a session re-ranks, one after another")
    ca.add_argument("--size", type=int, default=30, help="candidates in a list")
    ca.add_argument("--concurrency", type=int, default=4, help="sessions at a time")
    ca.add_argument("--workers", type=int, default=2)
    ca.add_argument("--delay-ms", type=float, default=20.0, help="stub compute per pair")
    ca.add_argument("--model", help="a model directory: real workers (torch fp32) instead of stub workers")
    ca.add_argument("--threads", type=int, default=1, help="torch threads per real worker")
    ca.add_argument("--seed", type=int, default=0)
    ca.add_argument("--micro", action="store_true", help="only the broker's own cost per W30 request, in process")
    ca.add_argument("--gateway", action="store_true", help="only W30 requests/s through the gateway, cache off and on")
    ca.add_argument("--seconds", type=float, default=10.0, help="of each --gateway run")
    ca.add_argument("--out")
    ca.set_defaults(fn=cmd_cache)

    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
