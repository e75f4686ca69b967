"""`python -m worker.health`: exit 0 if this container's worker is connected and alive, else 1.

The worker rewrites RERANKER_HEALTH_FILE every heartbeat with its state and
the time it last heard from the broker. Healthy means: the file is fresh (the
worker loop runs) and the broker was heard from within the heartbeat liveness
(the worker is really connected, not just started). A worker that is loading
its model has no file yet and is not healthy.
"""

from __future__ import annotations

import json
import os
import sys
import time

from shared.settings import Settings, load_or_exit


def write(path: str, state: str, broker_seen: float) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump({"state": state, "time": time.time(), "broker_seen": broker_seen, "pid": os.getpid()}, fh)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def check(settings: Settings, now: float | None = None) -> tuple[bool, str]:
    now = time.time() if now is None else now
    limit = settings.heartbeat_interval * settings.heartbeat_liveness
    try:
        with open(settings.health_file) as fh:
            state = json.load(fh)
    except (OSError, ValueError) as exc:
        return False, f"no worker state in {settings.health_file}: {exc}"
    if now - state["time"] > limit:
        return False, f"worker loop silent for {now - state['time']:.0f} s"
    if now - state["broker_seen"] > limit:
        return False, f"worker not connected: broker last heard {now - state['broker_seen']:.0f} s ago"
    return True, f"worker {state['pid']} {state['state']}"


def main() -> None:
    ok, message = check(load_or_exit(service="worker"))
    print(message)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
