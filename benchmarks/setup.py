"""`python -m benchmarks setup`: everything the suite needs, for the Python that runs it.

1. the project's extras the suite uses: worker, dev, onnx, openvino (the fast modes, and the peers'
   ONNX export) and bench (the PNG plot, gateway profiles), with pip and torch pinned
   (constraints/torch-cpu.txt), so that no CUDA build of torch can come in;
2. the model: mxbai-rerank-base-v1's architecture with random weights, built in benchmarks/.models/;
3. the peers' virtual environments (benchmarks/peers/setup.sh: infinity-emb, LitServe; PyPI needed);
4. wrk for the gateway overhead test, with --install-wrk (apt-get, as root);
5. the service warmed up on this machine: each RERANKER_PRECISION the suite runs (exact, fast) is loaded
   once as a worker would load it, which exports the model, optimizes and compiles it for this CPU, and
   measures and caches the mode choice (worker/selection.py), so that the suite times warm starts.

On a fresh clone, `bash benchmarks/setup.sh` first makes .venv (scripts/dev.sh setup), then runs this.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from devkit.procs import ROOT

EXTRAS = "worker,dev,onnx,openvino,bench"
WARM = ("exact", "fast")


def say(message: str) -> None:
    print(f"setup: {message}", file=sys.stderr, flush=True)


def install_extras() -> None:
    say(f"installing the project with [{EXTRAS}] (torch pinned by constraints/torch-cpu.txt)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c",
                    str(ROOT / "constraints" / "torch-cpu.txt"), "-e", f".[{EXTRAS}]"], cwd=ROOT, check=True)


def install_wrk() -> None:
    if shutil.which("wrk"):
        return
    say("installing wrk (apt-get)")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)


def warm(model, threads: int) -> list[str]:
    """Load each mode the suite runs as a worker would; one line per mode: what it chose."""
    from .quality import score_in_subprocess

    lines = []
    for precision in WARM:
        say(f"warming up RERANKER_PRECISION={precision} on {threads} threads (first time: exports, ~1-3 min)")
        got = score_in_subprocess(model, {"RERANKER_PRECISION": precision}, [("a query", ["a text", "another"])],
                                  threads)
        if "error" in got:
            lines.append(f"RERANKER_PRECISION={precision}: failed: {got['error']}")
            continue
        info = got["info"]
        lines.append(f"RERANKER_PRECISION={precision}: {info['backend']} {info['precision']} ({info.get('choice')})")
    return lines


def cmd_setup(args) -> int:
    from worker.cpu import cpu_class, cpu_flags, cpu_model

    from .suite import ensure_model

    if not args.no_install:
        install_extras()
    model = ensure_model(args.arch, None)
    status = 0
    if not args.no_peers:
        say("peer venvs (benchmarks/peers/setup.sh; a few minutes)")
        status = subprocess.run(["bash", str(ROOT / "benchmarks" / "peers" / "setup.sh")], cwd=ROOT).returncode
    if args.install_wrk:
        install_wrk()
    flags = cpu_flags()
    report = [f"CPU: {cpu_model()}, class {cpu_class(flags)}, instruction sets "
              f"{' '.join(f for f in sorted(flags) if f.startswith(('avx', 'amx', 'fma'))) or 'none of note'}",
              f"model: {model}", f"wrk: {shutil.which('wrk') or 'absent (the gateway test is skipped; --install-wrk)'}"]
    if not args.no_warm:
        report += warm(model, args.threads)
    print("\n".join(report))
    return status
