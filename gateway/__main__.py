"""`python -m gateway`: the broker (a supervised process) and the HTTP gateway (gunicorn + uvicorn workers).

Exit codes: 0 when stopped (SIGTERM, Ctrl-C), 1 when it cannot start (an endpoint is taken; the line
says which and the setting that moves it), 2 for a malformed setting.
"""

from __future__ import annotations

import sys

from shared import curve
from shared.logs import setup_logging
from shared.settings import load_or_exit

from .server import BrokerSupervisor, GatewayServer, taken_endpoint


def main() -> None:
    settings = load_or_exit(service="gateway")
    curve.check_keys_or_exit(settings, "broker")
    taken = taken_endpoint(settings)
    if taken is not None:
        print(f"gateway: cannot start: {taken}", file=sys.stderr)
        raise SystemExit(1)
    setup_logging(settings, "gateway")
    supervisor = BrokerSupervisor(settings)
    supervisor.start_broker()
    supervisor.start()
    try:
        GatewayServer(settings).run()
    except KeyboardInterrupt:  # Ctrl-C before gunicorn took over the signals: nothing to drain yet
        pass
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
