"""Probes: is a server answering, is a port free, and who holds it if not. Loopback only."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request

import psutil

from .config import LOOPBACK, DevstackError, StackConfig

# Probes talk to 127.0.0.1 only, so they must ignore http_proxy/HTTP_PROXY: a corporate proxy setting without a
# matching no_proxy would otherwise route the health check to the proxy and the stack would never look ready.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_ok(url: str) -> bool:
    """True if GET `url` answers 200 within two seconds."""
    try:
        with _DIRECT.open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
        return False


def redis_pong(port: int, password: str | None = None) -> bool:
    """True if a Redis server on 127.0.0.1:`port` answers PING with PONG (after AUTH with `password` if given)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            if password is not None:
                conn.sendall(b"AUTH " + password.encode() + b"\r\n")
                if not conn.recv(64).startswith(b"+OK"):
                    return False
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def smtp_greets(port: int) -> bool:
    """True if an SMTP server on 127.0.0.1:`port` sends its 220 greeting."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=2) as conn:
            greeting = conn.recv(512)
            conn.sendall(b"QUIT\r\n")
            return greeting.startswith(b"220")
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """Name and pid of the process listening on `port`, when the system lets us see it."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"{psutil.Process(conn.pid).name()}, pid {conn.pid}"
    except (psutil.Error, OSError):
        pass
    return None


def port_is_free(port: int) -> bool:
    """True if we can bind 127.0.0.1:`port` the way the servers will.

    SO_REUSEADDR mirrors PostgreSQL, Redis and uvicorn: a port held only by TIME_WAIT connections of a previous
    run is free for them, and must not be reported as busy; a listener on 0.0.0.0 or 127.0.0.1 still conflicts.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def check_ports(config: StackConfig) -> None:
    """Refuse to start, naming every busy port and the variable to change, before anything is started."""
    problems = []
    for claim in config.port_claims():
        if port_is_free(claim.port):
            continue
        owner = port_owner(claim.port)
        held = f"; held by {owner}" if owner else ""
        problems.append(
            f"Port {claim.port} is already in use ({claim.service}{held}). "
            f"Set {claim.variable} to another port, or stop the process using it."
        )
    if problems:
        raise DevstackError("\n".join(problems))
