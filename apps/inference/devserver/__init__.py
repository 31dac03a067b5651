"""The AIOS development inference server: TGI/TEI/OpenAI-compatible wire protocol, scripted replies.

It is part of the product (the embedded stack runs it when no real inference server is configured) and
is not a language model. See `app.py` for the routes and `scripts.py` for how replies are chosen.
"""

from __future__ import annotations

from .app import create_app
from .config import DEMO_SCRIPT, DEVSERVER_LABEL, DevServerConfig
from .scripts import Script, ScriptError

__all__ = ["DEMO_SCRIPT", "DEVSERVER_LABEL", "DevServerConfig", "Script", "ScriptError", "create_app"]
