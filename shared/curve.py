"""CURVE on the workers port: traffic encrypted, and only workers whose public key is allowed may join.

Off unless the settings name the keys (RERANKER_CURVE_*). Then the broker's backend ROUTER is a CURVE
server with the broker's key pair, and a ZAP handler (pyzmq's zmq.auth in a thread, on the broker's
Context: the only one it covers) admits a worker only if its public key is a file in the allow-list
directory. Anyone else is refused during the handshake, before a message of theirs reaches the
broker, and the refusal is logged. A worker's DEALER is a CURVE client with its own key pair and the
broker's public key.

Keys are the files `reranker keys DIR` writes (zmq.auth.create_certificates): NAME.key holds a public
key, NAME.key_secret the pair. Refusals come in bursts (a refused peer reconnects every 100 ms), so
each kind is logged once, then counted, with at most one line per kind every LOG_EVERY seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from .endpoints import is_local
from .ratelimit import RateLimitedLog
from .settings import Settings

log = logging.getLogger("reranker.curve")

LOG_EVERY = 10.0   # seconds between two lines about the same kind of refusal
RELOAD_EVERY = 1.0  # seconds between two readings of the allow-list directory


class CurveError(ValueError):
    """A key file or directory that cannot be used; str() is one line naming the setting."""


def broker_curve_on(settings: Settings) -> bool:
    return settings.curve_broker_key is not None


def worker_curve_on(settings: Settings) -> bool:
    return settings.curve_worker_key is not None


def _key_pair(path: str, variable: str) -> tuple[bytes, bytes]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{variable}={path!r}: cannot read the CURVE key file: {exc}") from None
    if secret is None:
        raise CurveError(f"{variable}={path!r} holds no secret key: give the NAME.key_secret file")
    return public, secret


def _public_key(path: str, variable: str) -> bytes:
    try:
        return zmq.auth.load_certificate(path)[0]
    except (OSError, ValueError) as exc:
        raise CurveError(f"{variable}={path!r}: cannot read the CURVE key file: {exc}") from None


def _allowed_keys(directory: str) -> set[bytes]:
    try:
        return set(zmq.auth.load_certificates(directory))
    except (OSError, ValueError) as exc:
        raise CurveError(f"RERANKER_CURVE_ALLOWED_KEYS={directory!r}: cannot read the allowed keys: {exc}") from None


def check_keys_or_exit(settings: Settings, side: str) -> None:
    """For main(): read the keys that `side` ("broker" or "worker") will use, so that a program with an
    unreadable key stops at its start, with one line (exit 2), not at its first connection."""
    try:
        if side == "broker" and broker_curve_on(settings):
            _key_pair(settings.curve_broker_key, "RERANKER_CURVE_BROKER_KEY")
            _allowed_keys(settings.curve_allowed_keys)
        elif side == "worker" and worker_curve_on(settings):
            _key_pair(settings.curve_worker_key, "RERANKER_CURVE_WORKER_KEY")
            _public_key(settings.curve_broker_public_key, "RERANKER_CURVE_BROKER_PUBLIC_KEY")
    except CurveError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# One for the process: a refused peer comes back on new connections and sockets.
_REFUSALS = RateLimitedLog(log, window=LOG_EVERY, burst=1)


class Gatekeeper(ThreadAuthenticator):
    """The ZAP handler of the workers port: admits the CURVE keys in an allow-list directory.

    The directory is read again on a connection attempt at most every RELOAD_EVERY seconds, so that a
    key added there admits its worker without a restart, and a key removed refuses its worker's next
    connection (connections already made stay until they close).
    """

    def __init__(self, context: zmq.Context, directory: str) -> None:
        super().__init__(context, log=logging.getLogger("reranker.curve.zap"))
        self.directory = directory
        self._keys = _allowed_keys(directory)
        self._keys_read_at = time.monotonic()
        self._peer_address = "?"

    def open(self) -> "Gatekeeper":
        self.start()
        self.configure_curve_callback(domain="*", credentials_provider=self)
        return self

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # the peer's address, for the log; requests are handled one at a time, in the ZAP thread
        self._peer_address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        """zmq.auth's credentials check: `key` is the worker's public key, Z85-encoded."""
        if time.monotonic() - self._keys_read_at >= RELOAD_EVERY:
            try:
                self._keys = _allowed_keys(self.directory)
            except CurveError as exc:
                self._keys = set()  # refuse all rather than trust a list we cannot read
                _REFUSALS.warning("%s; every worker is refused", exc)
            self._keys_read_at = time.monotonic()
        if key in self._keys:
            return True
        _REFUSALS.warning("refused a worker from %s: its CURVE public key %s is not in "
                       "RERANKER_CURVE_ALLOWED_KEYS (%s)", self._peer_address, key.decode("ascii"), self.directory)
        return False


# Handshake failures as the peer that is refused (or refuses) sees them.
_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH


def _watch_handshakes(sock: zmq.Socket, describe) -> None:
    """Log the handshake failures of `sock`, in a thread, as `describe(event, value)` words them (None:
    not logged). The thread ends when the socket is closed."""
    address = f"inproc://reranker-handshakes-{id(sock)}-{time.monotonic_ns()}"
    sock.monitor(address, _FAILURES | zmq.EVENT_MONITOR_STOPPED)
    events = sock.context.socket(zmq.PAIR)
    events.connect(address)  # before the socket connects or binds: no event is missed

    def watch() -> None:
        try:
            while True:
                event = recv_monitor_message(events)
                if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                    return
                line = describe(event["event"], event["value"])
                if line is not None:
                    _REFUSALS.warning(line)
        except zmq.ContextTerminated:
            pass
        finally:
            events.close(0)

    threading.Thread(target=watch, name="curve-handshakes", daemon=True).start()


def _protocol_error(value: int) -> str:
    try:
        return zmq.Event(value).name.removeprefix("PROTOCOL_ERROR_")
    except ValueError:
        return f"error {value}"


def protect_workers_port(sock: zmq.Socket, settings: Settings) -> Gatekeeper | None:
    """Before the broker binds `sock` (its backend ROUTER) to RERANKER_WORKERS_BIND: make it a CURVE
    server that admits allowed workers only, when the settings name the keys, and log the handshakes it
    refuses. Without CURVE, binding beyond loopback gets a one-line warning. Returns the ZAP handler
    (stop() it when done), or None. Raises CurveError."""
    endpoint, curve = settings.workers_bind, broker_curve_on(settings)
    gatekeeper = None
    if curve:
        public, secret = _key_pair(settings.curve_broker_key, "RERANKER_CURVE_BROKER_KEY")
        gatekeeper = Gatekeeper(sock.context, settings.curve_allowed_keys).open()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_server = True
        log.info("CURVE on for the workers port %s: workers with a key in %s may join", endpoint,
                 settings.curve_allowed_keys)
    elif not is_local(endpoint):
        log.warning("the workers port %s is open to other hosts without CURVE: anyone who reaches it can serve "
                    "scores; set RERANKER_CURVE_BROKER_KEY and RERANKER_CURVE_ALLOWED_KEYS (`reranker keys`), or "
                    "bind it to 127.0.0.1", endpoint)

    def describe(event: int, value: int) -> str | None:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return None  # the Gatekeeper logged it, with the key
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            why = "no CURVE: a worker without keys?" if curve else "no details"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            why = "a worker without CURVE keys?" if curve else "a worker with CURVE keys: this broker has none"
        elif value == zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC:
            why = "a worker given another broker's public key?"
        else:
            why = _protocol_error(value)
        return f"refused a connection to the workers port {endpoint}: the handshake failed ({why})"

    _watch_handshakes(sock, describe)
    return gatekeeper


def secure_worker_socket(sock: zmq.Socket, settings: Settings) -> None:
    """Before a worker connects `sock` (its DEALER) to the broker: make it a CURVE client when the
    settings name the keys, and log why the broker refuses it, if it does. Raises CurveError."""
    url, curve = settings.broker_url, worker_curve_on(settings)
    if curve:
        public, secret = _key_pair(settings.curve_worker_key, "RERANKER_CURVE_WORKER_KEY")
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = _public_key(settings.curve_broker_public_key, "RERANKER_CURVE_BROKER_PUBLIC_KEY")

    def describe(event: int, value: int) -> str:
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return (f"the broker at {url} refused this worker's CURVE key: add its public key to the broker's "
                    f"RERANKER_CURVE_ALLOWED_KEYS")
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return (f"the broker at {url} does not use CURVE: unset RERANKER_CURVE_WORKER_KEY and "
                    f"RERANKER_CURVE_BROKER_PUBLIC_KEY here, or turn CURVE on there" if curve else
                    f"the broker at {url} refused this worker: it requires CURVE (set RERANKER_CURVE_WORKER_KEY "
                    f"and RERANKER_CURVE_BROKER_PUBLIC_KEY)")
        why = _protocol_error(value) if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL else "no details"
        hint = ": is RERANKER_CURVE_BROKER_PUBLIC_KEY the broker's public key?" if curve else ""
        return f"the handshake with the broker at {url} failed ({why}){hint}"

    _watch_handshakes(sock, describe)


def write_keys(directory: str | os.PathLike, worker: str = "worker") -> dict[str, dict[str, Path]]:
    """Key pairs for CURVE, laid out as each side mounts them:

        DIR/broker/broker.key_secret     the broker's pair (kept if it is there)
        DIR/broker/allowed/WORKER.key    the worker's public key, allowed by the broker
        DIR/WORKER/worker.key_secret     the worker's pair
        DIR/WORKER/broker.key            the broker's public key, for the worker

    Returns {"broker": {variable: path}, "worker": {variable: path}}. Raises CurveError if the worker's
    directory is there already (its key would be replaced)."""
    root = Path(directory)
    if not worker or worker in ("broker", "allowed") or not worker.replace("-", "").replace("_", "").isalnum():
        raise CurveError(f"worker name {worker!r}: use letters, digits, - and _ (not 'broker' or 'allowed')")
    broker_dir, allowed, worker_dir = root / "broker", root / "broker" / "allowed", root / worker
    if worker_dir.exists():
        raise CurveError(f"{worker_dir} exists: choose another worker name, or remove it first")
    for d in (broker_dir, allowed, worker_dir):
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not (broker_dir / "broker.key_secret").exists():
        zmq.auth.create_certificates(broker_dir, "broker")
    zmq.auth.create_certificates(worker_dir, "worker")
    shutil.copyfile(worker_dir / "worker.key", allowed / f"{worker}.key")
    shutil.copyfile(broker_dir / "broker.key", worker_dir / "broker.key")
    for secret in (broker_dir / "broker.key_secret", worker_dir / "worker.key_secret"):
        secret.chmod(0o600)
    return {
        "broker": {"RERANKER_CURVE_BROKER_KEY": broker_dir / "broker.key_secret",
                   "RERANKER_CURVE_ALLOWED_KEYS": allowed},
        "worker": {"RERANKER_CURVE_WORKER_KEY": worker_dir / "worker.key_secret",
                   "RERANKER_CURVE_BROKER_PUBLIC_KEY": worker_dir / "broker.key"},
    }
