"""A queue's key goes into the addresses of its pages: only letters, digits and : - _ are accepted."""

from __future__ import annotations

from typing import Any

import pytest

from apps.approvals.models import ApprovalQueue
from apps.approvals.services import approval_queue_create
from apps.core.exceptions import ValidationFailed


@pytest.mark.django_db
@pytest.mark.parametrize("key", ["claims/eu", "claims eu", "claims?x=1", "réclamations", "a#b", "", "x" * 151])
def test_a_key_that_cannot_be_part_of_an_address_is_refused(admin_user_role: Any, key: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        approval_queue_create(actor=admin_user_role, key=key, name="EU claims")
    assert refused.value.extra["fields"]["key"] == ["Letters, digits and : - _ without spaces."]
    assert not ApprovalQueue.objects.filter(name="EU claims").exists()


@pytest.mark.django_db
def test_a_key_of_letters_digits_and_separators_is_accepted(admin_user_role: Any) -> None:
    queue = approval_queue_create(actor=admin_user_role, key="claims:eu_2-north", name="EU claims")
    assert queue.key == "claims:eu_2-north"
