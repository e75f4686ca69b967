"""`python -m worker.health`: exit 0 if the workers here (a container's one worker) are connected and alive.

Each worker rewrites its own health file every heartbeat with its state and the time it last heard
from the broker: RERANKER_HEALTH_FILE, by default $TMPDIR/reranker-worker-<pid>.json, one per worker
process (the worker logs where at start). Healthy means: the file is fresh (the worker loop runs) and
the broker was heard from within the heartbeat liveness (the worker is really connected, not just
started). A worker that is loading its model has no file yet and is not healthy.

With RERANKER_HEALTH_FILE (or --health-file) set, that file is checked. Without it, every live worker's
default file in $TMPDIR: in a container that is its one worker; on a host with several, one line each,
and healthy only if all are. Files left by workers that are gone are passed over.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from shared.settings import Settings, load_or_exit

PATTERN = "reranker-worker-*.json"


def write(path: str, state: str, broker_seen: float) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"state": state, "time": time.time(), "broker_seen": broker_seen, "pid": os.getpid()}, fh)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def clear(path: str) -> None:
    """Remove the health file: at start (a file from an earlier run is no news of this one) and at exit."""
    Path(path).unlink(missing_ok=True)


def check(path: str, limit: float, now: float | None = None) -> tuple[bool, str]:
    """(healthy, one line) for the worker whose health file is `path`; `limit`: seconds of silence allowed."""
    now = time.time() if now is None else now
    try:
        with open(path) as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        return False, f"no worker state in {path}: {exc}"
    if now - state["time"] > limit:
        return False, f"worker {state['pid']} ({path}): loop silent for {now - state['time']:.0f} s"
    if now - state["broker_seen"] > limit:
        return False, (f"worker {state['pid']} ({path}): not connected, broker last heard "
                       f"{now - state['broker_seen']:.0f} s ago")
    return True, f"worker {state['pid']} {state['state']} ({path})"


def live_workers(directory: str) -> list[str]:
    """Default health files in `directory` whose worker process is alive."""
    found = []
    for path in sorted(Path(directory).glob(PATTERN)):
        try:
            pid = int(json.loads(path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a worker's state
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue  # gone
        except PermissionError:
            pass  # alive, another user's
        found.append(str(path))
    return found


def main() -> None:
    settings: Settings = load_or_exit(service="worker")
    limit = settings.heartbeat_interval * settings.heartbeat_liveness
    if "health_file" in settings.model_fields_set:
        paths = [settings.health_file]
    else:
        paths = live_workers(tempfile.gettempdir())
        if not paths:
            print(f"no worker here: no live worker's {PATTERN} in {tempfile.gettempdir()} "
                  f"(a worker writes it once connected; RERANKER_HEALTH_FILE names another file)")
            sys.exit(1)
    results = [check(path, limit) for path in paths]
    for _, line in results:
        print(line)
    sys.exit(0 if all(ok for ok, _ in results) else 1)


if __name__ == "__main__":
    main()
