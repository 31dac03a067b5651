"""The launcher's console: every child's lines and its own, prefixed, aligned and never interleaved mid-line."""

from __future__ import annotations

import os
import sys
import threading

# The services and one-shot steps; `run` registers the fleet's names before its first line.
KNOWN_NAMES = (
    "devstack",
    "postgres",
    "redis",
    "inference",
    "mail",
    "outside",
    "initdb",
    "migrate",
    "seed",
)
_COLOURS = ("36", "33", "35", "32", "34", "96", "93", "95", "92", "94")


class Console:
    """Serialises output from the launcher and the children's reader threads, one whole line at a time."""

    def __init__(self) -> None:
        # Reentrant, so a message printed while a line is being written (e.g. from a nested call) cannot deadlock.
        self._lock = threading.RLock()
        self._width = 0
        self._colours: dict[str, str] = {}
        for name in KNOWN_NAMES:  # fixed widths from the first line on, so the columns never shift
            self.register(name)
        self._use_colour = (
            sys.stdout.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "") != "dumb"
        )

    def register(self, name: str) -> None:
        """Reserve a prefix width and colour for `name` so all prefixes line up."""
        with self._lock:
            self._width = max(self._width, len(name))
            self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])

    def emit(self, name: str, text: str) -> None:
        """Print `text` (possibly several lines) with a `[name]` prefix."""
        prefix = f"[{name}]".ljust(self._width + 2)
        if self._use_colour:
            prefix = f"\033[{self._colours.get(name, '1')}m{prefix}\033[0m"
        self._write("".join(f"{prefix} {line}\n" for line in text.splitlines() or [""]))

    def say(self, text: str) -> None:
        """A message from the launcher itself."""
        self.emit("devstack", text)

    def error(self, text: str) -> None:
        """An error from the launcher; goes to stdout too so it stays in order with the children's lines."""
        self.emit("devstack", f"ERROR: {text}")

    def plain(self, text: str) -> None:
        """Print `text` without a prefix (the banner)."""
        self._write(text if text.endswith("\n") else text + "\n")

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                sys.stdout.write(text)
                sys.stdout.flush()
            except (BrokenPipeError, OSError, ValueError):
                # The terminal went away (closed pipe, `| head`): the log files still get everything.
                pass
