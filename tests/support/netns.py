"""Separate hosts on one machine: network namespaces, each with its own address on a link to the main host.

Host i is the namespace `aios-so-<pid>-<i>` with a veth pair: the namespace's end has 10.231.N.2/24 and a default
route through the main host's end, 10.231.N.1/24. A process started with `host.argv(...)` (`ip netns exec`)
sees only its loopback and that link, so it reaches the main host's services only at the addresses they listen
on beyond 127.0.0.1 (Linux answers on any of its addresses through any link, so every host can use the first
host's gateway address). Killing a host means SIGKILLing every process in its namespace.

Needs root (CAP_NET_ADMIN); without it, or without `ip`, the test fails with a message saying so. Everything is
removed on exit, failures included, and namespaces left by a session that was itself killed are removed by the
next one (their names carry the dead session's pid).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

PREFIX = "aios-so-"
SUBNET = "10.231"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result


def _require_root() -> None:
    if shutil.which("ip") is None:
        raise AssertionError("the scale-out test needs the `ip` command (Debian's iproute2 package) to make hosts")
    if os.geteuid() != 0:
        raise AssertionError(
            "the scale-out test makes network namespaces (one per host) and needs root (CAP_NET_ADMIN); "
            "run the suite as root, as CI does"
        )


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address, and the main host's address on its link (its gateway)."""

    index: int
    namespace: str
    address: str
    gateway: str
    host_link: str  # the main host's end of the veth pair

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside this host (`ip netns exec` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace, *command]

    def pids(self) -> list[int]:
        result = _ip("netns", "pids", self.namespace, check=False)
        return [int(pid) for pid in result.stdout.split() if pid.isdigit()]

    def kill_everything(self) -> int:
        """SIGKILL every process in this host, as a machine that loses power; returns how many there were."""
        killed = 0
        for _ in range(20):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
                except ProcessLookupError:
                    pass
        return killed


def _used_subnets() -> set[int]:
    text = _ip("-4", "-o", "addr", "show").stdout
    return {int(third) for third in re.findall(rf"\b{re.escape(SUBNET)}\.(\d+)\.\d+/", text)}


def remove_stale() -> None:
    """Delete namespaces (and their links) left by sessions that no longer run."""
    for line in _ip("netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        found = re.fullmatch(rf"{re.escape(PREFIX)}(\d+)-(\d+)", name)
        if not found:
            continue
        try:
            os.kill(int(found.group(1)), 0)
            continue  # its session still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        _delete(name, f"so{int(found.group(1)) % 100000}h{found.group(2)}")


def _delete(namespace: str, host_link: str) -> None:
    result = _ip("netns", "pids", namespace, check=False)
    for pid in result.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    _ip("link", "del", host_link, check=False)  # takes its peer inside the namespace with it
    _ip("netns", "del", namespace, check=False)


class Hosts:
    """`count` hosts, made on enter and removed on exit (see the module docstring)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.hosts: list[Host] = []

    def __enter__(self) -> list[Host]:
        _require_root()
        remove_stale()
        try:
            used = _used_subnets()
            candidates = [n for n in range(1 + os.getpid() % 200, 255) if n not in used]
            for index in range(self.count):
                third = candidates[index]
                namespace = f"{PREFIX}{os.getpid()}-{index}"
                host_link, inner_link = f"so{os.getpid() % 100000}h{index}", f"so{os.getpid() % 100000}n{index}"
                host = Host(index, namespace, f"{SUBNET}.{third}.2", f"{SUBNET}.{third}.1", host_link)
                _ip("netns", "add", namespace)
                self.hosts.append(host)
                _ip("link", "add", host_link, "type", "veth", "peer", "name", inner_link)
                _ip("link", "set", inner_link, "netns", namespace)
                _ip("addr", "add", f"{host.gateway}/24", "dev", host_link)
                _ip("link", "set", host_link, "up")
                inside = ["netns", "exec", namespace, "ip"]
                _ip(*inside, "link", "set", "lo", "up")
                _ip(*inside, "addr", "add", f"{host.address}/24", "dev", inner_link)
                _ip(*inside, "link", "set", inner_link, "up")
                _ip(*inside, "route", "add", "default", "via", host.gateway)
        except BaseException:
            self.__exit__()
            raise
        return self.hosts

    def __exit__(self, *exc: object) -> None:
        for host in self.hosts:
            _delete(host.namespace, host.host_link)
        self.hosts = []
