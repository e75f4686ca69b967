"""`reranker`: one command for the service's programs.

    reranker gateway [OPTIONS]   the HTTP gateway and its broker (same as python -m gateway)
    reranker worker [OPTIONS]    a CrossEncoder worker (same as python -m worker)
    reranker bench ARGS...       the benchmark suite (python -m benchmarks), from a source checkout
    reranker keys DIR [--worker NAME]
                                 CURVE key pairs for the workers port: the broker's (once) and a
                                 worker's, each side's files in a directory of its own

`reranker gateway --help` and `reranker worker --help` list every option that program reads, with
its environment variable and default (shared/settings.py declares them). A program is imported
only when it runs: the gateway's install has no torch, and the worker loads its model in main().
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

PROGRAMS = {"gateway": "gateway.__main__", "worker": "worker.__main__"}
USAGE = "usage: reranker {gateway,worker,bench,keys} [OPTIONS]   (reranker COMMAND --help for its options)"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__ if argv else USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        return bench(rest)
    if command == "keys":
        return keys(rest)
    if command not in PROGRAMS:
        print(f"reranker: no command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    # The program's main() reads its options from sys.argv, as under `python -m`.
    sys.argv = [f"reranker {command}", *rest]
    importlib.import_module(PROGRAMS[command]).main()
    return 0


def bench(args: list[str]) -> int:
    """`python -m benchmarks ARGS`: the suite lives in the source tree, not in the installed packages."""
    if importlib.util.find_spec("benchmarks") is None and not Path("benchmarks", "__main__.py").is_file():
        print("reranker bench: the benchmark suite (python -m benchmarks) is not here. It ships with the "
              "source tree only, not with the installed package or the images: run it from a checkout's "
              "root.", file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks", *args])
    return 0  # not reached


def keys(args: list[str]) -> int:
    """`reranker keys DIR [--worker NAME]`: write CURVE key pairs and say which setting takes which file."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="reranker keys", description="Write CURVE key pairs for the workers port: the broker's pair (kept if "
        "DIR/broker has it) and one worker's pair. Give each worker host its own NAME to revoke it alone.")
    parser.add_argument("directory", metavar="DIR")
    parser.add_argument("--worker", metavar="NAME", default="worker", help="the worker's key name (default: worker)")
    options = parser.parse_args(args)
    from shared.curve import CurveError, write_keys  # pyzmq: not needed by the other commands' start

    try:
        written = write_keys(options.directory, options.worker)
    except (CurveError, OSError) as exc:
        print(f"reranker keys: {exc}", file=sys.stderr)
        return 2
    for side, title in (("broker", "the gateway (its broker)"), ("worker", f"the worker {options.worker!r}")):
        print(f"# {title}")
        for variable, path in written[side].items():
            print(f"{variable}={path}")
    print("# Secret files are readable by their owner only: a container's user (uid 10001) must own them.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
