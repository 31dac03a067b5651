"""The lease rows behind the sweeper's one-at-a-time rule (apps/runs/singleton.py), on the real database.

Autocommit (transactional_db): each call is its own transaction, as in a worker, so `now()` moves between them.
A lease claimed for a negative time is one whose holder stopped renewing it: already run out.
"""

from __future__ import annotations

import pytest

from apps.runs.models import SingletonLease
from apps.runs.singleton import lease_claim, lease_holder_name, lease_release, lease_renew
from apps.runs.sweeper import sweep

pytestmark = pytest.mark.django_db(transaction=True)


def test_one_holder_at_a_time_until_release():
    first, second = lease_holder_name(), lease_holder_name()
    assert first != second
    assert lease_claim(name="sweep", holder=first, seconds=30)
    assert not lease_claim(name="sweep", holder=second, seconds=30)
    assert not lease_renew(name="sweep", holder=second, seconds=30)
    assert lease_renew(name="sweep", holder=first, seconds=30)
    lease_release(name="sweep", holder=second)  # not the holder: changes nothing
    assert not lease_claim(name="sweep", holder=second, seconds=30)
    lease_release(name="sweep", holder=first)
    assert lease_claim(name="sweep", holder=second, seconds=30)
    assert SingletonLease.objects.get(name="sweep").holder == second


def test_a_lease_that_ran_out_passes_to_the_next_and_its_old_holder_cannot_renew_it():
    dead, next_one = lease_holder_name(), lease_holder_name()
    assert lease_claim(name="sweep", holder=dead, seconds=-1)
    assert not lease_renew(name="sweep", holder=dead, seconds=30)
    assert lease_claim(name="sweep", holder=next_one, seconds=30)
    assert not lease_renew(name="sweep", holder=dead, seconds=30)
    assert lease_renew(name="sweep", holder=next_one, seconds=30)


def test_duties_are_independent():
    holder = lease_holder_name()
    assert lease_claim(name="sweep", holder=holder, seconds=30)
    assert lease_claim(name="another duty", holder=holder, seconds=30)


def test_a_sweep_whose_lease_ran_out_stops_at_the_next_phase():
    calls = []

    def renew() -> bool:
        calls.append(1)
        return len(calls) < 2

    report = sweep(renew=renew)
    assert report["lease_lost"] == 1
    assert set(report) == {"relayed", "lease_expired", "incidents", "lease_lost"}
