"""Processes for tests and benchmarks: start servers, find their process trees, read CPU and memory
from /proc, give each child a clean environment and a free port.

No psutil: /proc is read directly (Linux only, like the service's deployment).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from shared.settings import options

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment less the service's own variables and thread counts (each child sets what it
    needs), plus `extra`."""
    drop = {o.env for o in options()} | {"OMP_NUM_THREADS", "MKL_NUM_THREADS"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKER_") and k not in drop}
    env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


# -- /proc ---------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def spawned(pid: int) -> list[int]:
    """Children of `pid` that multiprocessing's spawn started (their command line runs spawn_main):
    the gateway's broker process, for one."""
    out = []
    for child in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                out.append(child)
        except OSError:
            pass
    return out


def tree(pids: Iterable[int]) -> list[int]:
    """The processes and all their descendants (now)."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                by_parent.setdefault(int(fields[1]), []).append(int(entry))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out and Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(by_parent.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (its own threads, not its children)."""
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    fields = _stat(pid)
    return 0 if fields is None else int(fields[21]) * PAGE


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def busy_share(seconds: float = 5.0) -> float:
    """The machine's CPU busy share over the next `seconds`: what else is running now. (The 1-minute
    load average still counts a benchmark that ended a minute ago.)"""
    busy0, total0 = machine_cpu()
    time.sleep(seconds)
    busy1, total1 = machine_cpu()
    return (busy1 - busy0) / max(1, total1 - total0)


class Monitor:
    """CPU and peak RSS of groups of process trees over a window, sampled in a thread.

    `groups` maps a name to the root pids of that group (e.g. "gateway" -> the gunicorn master,
    whose tree holds the uvicorn workers and the broker). RSS is summed over a group's tree and
    its peak over the samples is kept; CPU is the CPU time used in the window by the processes
    alive at its end, in cores (1.0 = one core busy all the time).
    """

    def __init__(self, groups: dict[str, list[int]], interval: float = 0.5) -> None:
        self.groups = groups
        self.interval = interval
        self.peak_rss = {name: 0 for name in groups}
        self._cpu0: dict[int, float] = {}
        self._pids: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _find(self) -> None:
        # the trees are walked at the start and the end only: a scan of /proc costs CPU that the
        # measured systems would miss on a small machine
        self._pids = {name: tree(roots) for name, roots in self.groups.items()}
        for pids in self._pids.values():
            for p in pids:
                self._cpu0.setdefault(p, cpu_seconds(p))

    def _sample(self) -> None:
        for name, pids in self._pids.items():
            self.peak_rss[name] = max(self.peak_rss[name], sum(rss_bytes(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "Monitor":
        self._machine0 = machine_cpu()
        self._t0 = time.monotonic()
        self._find()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self._t0
        busy, total = machine_cpu()
        self.machine_busy = (busy - self._machine0[0]) / max(1, total - self._machine0[1])
        self._sample()
        self.cpu = {}
        for name, roots in self.groups.items():
            used = sum(cpu_seconds(p) - self._cpu0.get(p, 0.0) for p in tree(roots))
            self.cpu[name] = used / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {
            "window_s": round(self.seconds, 3),
            "cpu_cores": {k: round(v, 3) for k, v in self.cpu.items()},
            "machine_cpu_busy": round(self.machine_busy, 3),
            "rss_mb": {k: round(v / 2**20, 1) for k, v in self.peak_rss.items()},
        }


# -- servers ---------------------------------------------------------------------

class Server:
    """One server process (in its own session, so that its whole tree can be stopped)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(log, "ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self._fh.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, servers: Iterable[Server] = ()) -> None:
    deadline = time.monotonic() + timeout
    servers = list(servers)
    while time.monotonic() < deadline:
        for s in servers:
            if not s.alive():
                raise RuntimeError(f"{s.name} exited with {s.proc.returncode} while waiting for {what}:\n{s.tail()}")
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    tails = "\n".join(f"== {s.name}\n{s.tail()}" for s in servers)
    raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}\n{tails}")


def python() -> str:
    return sys.executable
