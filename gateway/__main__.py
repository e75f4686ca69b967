"""`python -m gateway`: the broker (a supervised process) and the HTTP gateway (gunicorn + uvicorn workers)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time

from gunicorn.app.base import BaseApplication

from shared.logs import setup_logging
from shared.settings import Settings, load_or_exit

from .app import build_app
from .broker import run_broker

log = logging.getLogger("reranker.gateway")


class BrokerSupervisor(threading.Thread):
    """Keeps the broker process running; restarts it with back-off if it dies."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="broker-supervisor", daemon=True)
        self.settings = settings
        self.stopping = threading.Event()
        self.process: multiprocessing.Process | None = None
        # spawn: the broker must not inherit gunicorn's or anyone's sockets or threads
        self._mp = multiprocessing.get_context("spawn")

    def start_broker(self) -> None:
        self.process = self._mp.Process(target=run_broker, args=(self.settings,), name="reranker-broker")
        self.process.start()

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            started = time.monotonic()
            self.process.join()
            if self.stopping.is_set():
                return
            log.error("broker exited with code %s; restarting in %.1f s", self.process.exitcode, backoff)
            self.stopping.wait(backoff)
            backoff = 0.5 if time.monotonic() - started > 30 else min(backoff * 2, 16.0)
            if not self.stopping.is_set():
                self.start_broker()

    def stop(self) -> None:
        self.stopping.set()
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()


class GatewayServer(BaseApplication):
    """Gunicorn with uvicorn workers, configured from Settings rather than gunicorn's own CLI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        self.cfg.set("bind", [f"{s.host}:{s.port}"])
        self.cfg.set("workers", s.web_concurrency)
        self.cfg.set("worker_class", "uvicorn_worker.UvicornWorker")
        self.cfg.set("timeout", max(30, int(s.request_timeout) + 10))
        self.cfg.set("graceful_timeout", int(s.request_timeout) + 5)
        self.cfg.set("keepalive", 5)
        self.cfg.set("proc_name", "reranker-gateway")
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn 23+'s control socket sits at one path per user: two gateways on a host would fight over it
            self.cfg.set("control_socket_disable", True)

    def load(self):
        # Runs in each worker after fork: the app is made there, its broker socket in its lifespan.
        return build_app(self.settings)


def main() -> None:
    settings = load_or_exit(service="gateway")
    setup_logging(settings, "gateway")
    supervisor = BrokerSupervisor(settings)
    supervisor.start_broker()
    supervisor.start()
    try:
        GatewayServer(settings).run()
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
