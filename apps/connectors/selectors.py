"""Permission-aware reads of connections."""

from __future__ import annotations

from apps.accounts.models import User


def connection_use_problem(user: User, name: str, *, kind: str) -> str | None:
    """Why `user` may not name connection `name` (of `kind`) in a step, or None when she may."""
    raise NotImplementedError("the connections app is being built")
