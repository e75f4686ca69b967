"""ZeroMQ endpoints: which of them stay on this host."""

from __future__ import annotations

import ipaddress
import socket


def tcp_host(endpoint: str) -> str | None:
    """The host of a tcp:// endpoint (brackets of an IPv6 address removed); None for other transports."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_local(endpoint: str) -> bool:
    """True for ipc:// and inproc://, and for tcp:// on a loopback address or `localhost`: endpoints
    that no other host can reach. `tcp://*:5555`, `tcp://0.0.0.0:5555`, interface names and
    host names other than localhost are not local."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = tcp_host(endpoint)
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ipc_listened(path: str) -> bool:
    """Whether something listens on this ipc (unix socket) path; a file left by a process that died
    is not listened on, and may be removed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True
