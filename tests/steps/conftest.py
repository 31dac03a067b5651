"""Fixtures the `http.request` tests share: a recording API server on loopback, and a workflow to run steps of."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.connectors.helpers import allow_loopback
from tests.connectors.servers import ApiServer


@pytest.fixture
def api(settings: Any) -> Iterator[ApiServer]:
    allow_loopback(settings)
    with ApiServer() as server:
        yield server


@pytest.fixture
def workflow(analyst: Any, team: Any) -> Any:
    from apps.workflows.services import workflow_create

    return workflow_create(actor=analyst, name="Invoices", team=team)
