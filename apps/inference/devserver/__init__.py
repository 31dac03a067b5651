"""The AIOS development inference server: TGI/TEI/OpenAI-compatible wire protocol, scripted replies.

It is part of the product (the embedded stack runs it when no real inference server is configured) and
is not a language model. See `app.py` for the routes and `scripts.py` for how replies are chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import DEMO_SCRIPT, DEVSERVER_LABEL, DevServerConfig
from .scripts import Script, ScriptError

if TYPE_CHECKING:
    from .app import create_app

__all__ = ["DEMO_SCRIPT", "DEVSERVER_LABEL", "DevServerConfig", "Script", "ScriptError", "create_app"]


def __getattr__(name: str) -> Any:
    # The web app reads DEVSERVER_LABEL from here; loading the server (Starlette and all) only when asked
    # keeps it out of every web and worker process.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
