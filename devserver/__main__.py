"""`python -m devserver`: run the AIOS development inference server."""

from __future__ import annotations

import logging
import sys

from .config import config_from_args
from .runner import serve
from .scripts import Script, ScriptError


def main(argv: list[str] | None = None) -> int:
    """Parse options (flags over `AIOS_DEVSERVER_*` variables), check the script, serve until stopped."""
    config = config_from_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s", stream=sys.stderr)
    if config.script:
        try:
            Script.load(config.script)
        except ScriptError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        serve(config)
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port} ({exc.strerror})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
