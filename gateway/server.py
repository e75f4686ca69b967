"""The gateway's processes: gunicorn with uvicorn workers (GatewayServer), the broker beside it
(BrokerSupervisor), and the check that a start would not collide with another gateway (taken_endpoint)."""

from __future__ import annotations

import errno
import logging
import multiprocessing
import signal
import socket
import threading
import time
from urllib.parse import urlsplit

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from shared.endpoints import ipc_listened
from shared.logs import gunicorn_logconfig
from shared.settings import Settings

from .app import build_app
from .broker import run_broker
from .connections import worker_class

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
        # The broker leaves the terminal's process group once it runs (run_broker); until then a Ctrl-C
        # meant for gunicorn would stop it in the middle of its imports, with a traceback. A spawned
        # process keeps SIGINT ignored if it was at its start, and only the main thread may set that:
        # the first start is covered, a restart (after the broker died) is not.
        ignoring = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if ignoring else None
        try:
            self.process = self._mp.Process(target=run_broker, args=(self.settings,), name="reranker-broker")
            self.process.start()
        finally:
            if ignoring:
                signal.signal(signal.SIGINT, previous)

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


class GatewayLog(Logger):
    """gunicorn's logger, less two lines that are no news at shutdown.

    "Error while closing socket [Errno 9] Bad file descriptor": the uvicorn worker has already closed
    the listening socket when gunicorn closes it again (gunicorn#1877, harmless). "Worker (pid:N) was
    sent SIGINT!" as a warning: a Ctrl-C reaches the workers as well as gunicorn, and a worker stopped
    by it is as expected as one stopped by SIGTERM, which gunicorn logs as info.
    """

    def info(self, msg, *args, **kwargs) -> None:
        if msg.startswith("Error while closing socket") and args and "[Errno 9]" in str(args[0]):
            return
        super().info(msg, *args, **kwargs)

    def warning(self, msg, *args, **kwargs) -> None:
        if msg.startswith("Worker (pid:%s) was sent") and args[1:2] in (("SIGINT",), ("SIGQUIT",)):
            return super().info(msg, *args, **kwargs)
        super().warning(msg, *args, **kwargs)


class GatewayServer(BaseApplication):
    """Gunicorn with uvicorn workers, configured from Settings rather than gunicorn's own CLI."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        s = self.settings
        self.cfg.set("bind", [f"{s.host}:{s.port}"])
        self.cfg.set("workers", s.web_concurrency)
        self.cfg.set("worker_class", worker_class(s))  # uvicorn, with the settings' connection limits
        self.cfg.set("logger_class", GatewayLog)
        self.cfg.set("logconfig_dict", gunicorn_logconfig(s))  # gunicorn's own lines as every other line
        self.cfg.set("timeout", max(30, int(s.request_timeout) + 10))
        self.cfg.set("graceful_timeout", int(s.request_timeout) + 5)
        self.cfg.set("proc_name", "reranker-gateway")
        if "control_socket_disable" in self.cfg.settings:
            # gunicorn 23+'s control socket sits at one path per user: two gateways on a host would fight over it
            self.cfg.set("control_socket_disable", True)

    def load(self):
        # Runs in each worker after fork: the app is made there, its broker socket in its lifespan.
        return build_app(self.settings)


# -- before starting: is any endpoint taken? ------------------------------------------------------

def taken_endpoint(settings: Settings) -> str | None:
    """One line naming the first endpoint this gateway could not bind, and the setting that moves it;
    None if all are free. Checked before anything starts, so that a second gateway on a host says so
    at once instead of gunicorn's retries and the broker's restarts."""
    if _tcp_taken(settings.host, settings.port):
        return (f"port {settings.port} is in use (another gateway?): choose another port with PORT or "
                f"--port")
    workers = urlsplit(settings.workers_bind)
    if workers.scheme == "tcp" and workers.port is not None and _tcp_taken(workers.hostname, workers.port):
        return (f"the workers' port {workers.port} ({settings.workers_bind}) is in use (another gateway?): "
                f"choose another with RERANKER_WORKERS_BIND or --workers-bind, and point the workers' "
                f"RERANKER_BROKER_URL at it")
    if settings.frontend_url.startswith("ipc://") and ipc_listened(settings.frontend_url[len("ipc://"):]):
        return (f"the broker endpoint {settings.frontend_url} is in use by another gateway: choose another "
                f"with RERANKER_FRONTEND or --frontend-url")
    return None


def _tcp_taken(host: str | None, port: int) -> bool:
    """Whether something listens where a bind to (host, port) would collide, as gunicorn and ZeroMQ bind
    (SO_REUSEADDR: a closing connection in TIME_WAIT does not count)."""
    host = None if host in (None, "", "*") else host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError):
        return False  # a name only the server understands (a ZeroMQ interface name): let it bind and say
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False
