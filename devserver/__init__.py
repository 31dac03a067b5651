"""The AIOS development inference server: TGI/TEI/OpenAI-compatible wire protocol, scripted replies.

It is part of the product (the embedded stack runs it when no real inference server is configured) and
is not a language model. See `app.py` for the routes and `scripts.py` for how replies are chosen. Run it with
`python -m devserver` (`--help` lists every option).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DEMO_SCRIPT, DEVSERVER_LABEL, DevServerConfig
from .scripts import Script, ScriptError

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["DEMO_SCRIPT", "DEVSERVER_LABEL", "DevServerConfig", "Script", "ScriptError", "create_app"]


def __getattr__(name: str) -> Any:
    # Tests and benchmarks import the package for its scripts and configuration; loading the server
    # (Starlette, uvicorn) only when asked keeps those imports cheap.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
