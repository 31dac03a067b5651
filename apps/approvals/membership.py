"""Who belongs to an approval queue: the people and groups who work its items or name it in approval steps, and
the group its items escalate to.

Membership is django-guardian object permissions on the queue (`work_approvalqueue`, `use_approvalqueue`),
granted to a person or to a group (a team's group reaches every member). Working items also takes the reviewer
(or admin) role, which is a matter of roles, not of the queue: a person granted "work" without it is listed with
a note and cannot work items until an admin gives her the role. Only those who manage the queue
(`user_manages_queue`) change any of this, and every change is audited in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Count, Q
from guardian.shortcuts import assign_perm, get_groups_with_perms, get_users_with_perms, remove_perm

from apps.accounts.models import User
from apps.accounts.roles import ADMIN, REVIEWER, ROLES, user_roles
from apps.approvals.models import ApprovalQueue, ApprovalRequest
from apps.approvals.rules import USE, WORK, user_manages_queue
from apps.approvals.services import queue_workers
from apps.audit.services import audit_record
from apps.core.exceptions import Forbidden, ValidationFailed

Right = Literal["work", "use"]
# The rights a member can be given here, in the order the pages list them, and their guardian permission.
RIGHTS: dict[str, str] = {"work": WORK, "use": USE}
RIGHT_LABELS = {
    "work": "Works its items",
    "use": "Names it in approval steps",
    "manage": "Manages the queue",
}
_CODENAMES = {"work_approvalqueue": "work", "use_approvalqueue": "use", "manage_approvalqueue": "manage"}
_RIGHT_ORDER = ("work", "use", "manage")
NO_ROLE_NOTE = "Cannot work items until an admin gives this person the reviewer role."


@dataclass(frozen=True)
class QueueMember:
    """One row of a queue's member list: a person or a group, and the rights granted on the queue.

    For a person, `can_work` says whether she holds the reviewer or admin role that working items also takes,
    and `note` says what is missing when she holds "work" without it. For a group, `people` counts its active
    members and `reviewers` those of them with the reviewer or admin role.
    """

    user: User | None
    group: Group | None
    rights: tuple[str, ...]
    can_work: bool = True
    note: str = ""
    people: int = 0
    reviewers: int = 0

    @property
    def kind(self) -> str:
        return "person" if self.user is not None else "group"

    @property
    def key(self) -> str:
        """The name the API and the pages' forms use for the member: a username or a group name."""
        return self.user.username if self.user is not None else self.group.name if self.group is not None else ""

    @property
    def name(self) -> str:
        if self.user is not None:
            return self.user.display_name
        group = self.group
        if group is None:
            return ""
        team = getattr(group, "team", None)
        return f"{team.name} team" if team is not None else group.name

    @property
    def right_labels(self) -> list[str]:
        return [RIGHT_LABELS[right] for right in self.rights]


def _group_grants(queue: ApprovalQueue) -> dict[Group, list[str]]:
    """Groups granted anything on `queue`, with the codenames granted."""
    grants: Any = get_groups_with_perms(queue, attach_perms=True, only_with_perms_in=list(_CODENAMES))
    return dict(grants)


def _user_grants(queue: ApprovalQueue) -> dict[User, list[str]]:
    """People granted anything on `queue` themselves (not through a group), with the codenames granted."""
    grants: Any = get_users_with_perms(
        queue, attach_perms=True, with_group_users=False, only_with_perms_in=list(_CODENAMES)
    )
    return dict(grants)


def _rights(codenames: list[str]) -> tuple[str, ...]:
    held = {_CODENAMES[name] for name in codenames if name in _CODENAMES}
    return tuple(right for right in _RIGHT_ORDER if right in held)


def _works(user: User) -> bool:
    return user.is_superuser or bool(user_roles(user) & {REVIEWER, ADMIN})


def queue_members(queue: ApprovalQueue) -> list[QueueMember]:
    """Everyone granted a right on `queue` directly: groups first (by name), then people (by name). People who
    are in only through a group are not listed one by one; the group's row counts them."""
    groups = _group_grants(queue)
    users = _user_grants(queue)
    counts = {
        row["pk"]: row
        for row in Group.objects.filter(pk__in=[group.pk for group in groups])
        .annotate(
            people=Count("user", filter=Q(user__is_active=True), distinct=True),
            reviewers=Count(
                "user",
                filter=Q(user__is_active=True)
                & (Q(user__is_superuser=True) | Q(user__groups__name__in=[REVIEWER, ADMIN])),
                distinct=True,
            ),
        )
        .values("pk", "people", "reviewers")
    }
    team_groups = {group.pk: group for group in Group.objects.filter(pk__in=counts).select_related("team")}
    rows: list[QueueMember] = []
    for group, perms in sorted(groups.items(), key=lambda pair: pair[0].name):
        count = counts.get(group.pk, {})
        rows.append(
            QueueMember(
                user=None,
                group=team_groups.get(group.pk, group),
                rights=_rights(perms),
                people=count.get("people", 0),
                reviewers=count.get("reviewers", 0),
            )
        )
    people = User.objects.filter(pk__in=[user.pk for user in users]).prefetch_related("groups")
    by_pk = {user.pk: user for user in people}
    for user, perms in sorted(
        users.items(), key=lambda pair: ((pair[0].get_full_name() or pair[0].username).lower(), pair[0].pk)
    ):
        person = by_pk.get(user.pk, user)
        # The prefetched groups answer the role question without a query per row.
        person.__dict__["_role_names"] = frozenset(group.name for group in person.groups.all())
        rights = _rights(perms)
        can_work = _works(person) and person.is_active
        note = ""
        if "work" in rights and not person.is_active:
            note = "Cannot work items: the account is deactivated."
        elif "work" in rights and not can_work:
            note = NO_ROLE_NOTE
        rows.append(QueueMember(user=person, group=None, rights=rights, can_work=can_work, note=note))
    return rows


def member_group_choices() -> list[Group]:
    """The groups a queue may be shared with or escalate to: every group but the role groups (a role is not a
    team; granting a queue to "reviewer" would hand it to every reviewer of every team)."""
    return list(Group.objects.exclude(name__in=ROLES).select_related("team").order_by("name"))


def _holder(user: User | None, group: Group | None) -> User | Group:
    if (user is None) == (group is None):
        raise ValidationFailed("Name one person or one group.", fields={"member": ["Choose a person or a group."]})
    if group is not None and group.name in ROLES:
        raise ValidationFailed(
            "A role is not a team.",
            fields={"group": [f'"{group.name}" is a role: share the queue with people or with a team instead.']},
        )
    return user if user is not None else group  # type: ignore[return-value]


def _who(holder: User | Group) -> dict[str, str]:
    return {"user": holder.username} if isinstance(holder, User) else {"group": holder.name}


def _field(holder: User | Group) -> str:
    return "user" if isinstance(holder, User) else "group"


def _label(holder: User | Group) -> str:
    return holder.display_name if isinstance(holder, User) else holder.name


def _held(holder: User | Group, queue: ApprovalQueue) -> set[str]:
    if isinstance(holder, User):
        codenames = _user_grants(queue).get(holder, [])
    else:
        codenames = _group_grants(queue).get(holder, [])
    return set(_rights(codenames))


def _locked(actor: User, queue: ApprovalQueue) -> ApprovalQueue:
    if not user_manages_queue(actor, queue):
        raise Forbidden(f'Only someone who manages the "{queue.name}" queue can change who belongs to it.')
    # Membership changes of one queue take turns on its row: two managers each removing one of the last two
    # workers would otherwise both see the other one still there, and leave the queue with nobody.
    return ApprovalQueue.objects.select_for_update().get(pk=queue.pk)


@transaction.atomic
def queue_member_add(
    *, actor: User, queue: ApprovalQueue, user: User | None = None, group: Group | None = None, right: str = "work"
) -> bool:
    """Grant `right` ("work" or "use") on `queue` to one person or one group. False when the member held it
    already (nothing changes, nothing is audited). Forbidden unless `actor` manages the queue."""
    queue = _locked(actor, queue)
    holder = _holder(user, group)
    if right not in RIGHTS:
        raise ValidationFailed("Choose a right.", fields={"right": ["Choose whether they work items or use it."]})
    if isinstance(holder, User) and not holder.is_active:
        raise ValidationFailed("That account is deactivated.", fields={"user": [f"{_label(holder)} cannot sign in."]})
    if right in _held(holder, queue):
        return False
    assign_perm(RIGHTS[right], holder, queue)
    data: dict[str, object] = {**_who(holder), "right": right}
    if isinstance(holder, User) and right == "work" and not _works(holder):
        data["note"] = "no reviewer role"
    audit_record(actor=actor, verb="approval_queue.member_added", target=queue, data=data)
    return True


@transaction.atomic
def queue_member_remove(
    *,
    actor: User,
    queue: ApprovalQueue,
    user: User | None = None,
    group: Group | None = None,
    right: str | None = None,
) -> list[str]:
    """Take `right` (or, when None, every right granted here) on `queue` from one person or one group; the
    rights removed. Refused (ValidationFailed) when the member holds none of them, and when it would leave a
    queue with waiting items without anyone who could work them. Forbidden unless `actor` manages the queue."""
    queue = _locked(actor, queue)
    holder = _holder(user, group)
    if right is not None and right not in RIGHTS:
        raise ValidationFailed("Choose a right.", fields={"right": ["Choose whether they work items or use it."]})
    held = _held(holder, queue) & set(RIGHTS)
    removing = [name for name in RIGHTS if name in held and (right is None or name == right)]
    if not removing:
        raise ValidationFailed(
            "Nothing to remove.",
            fields={_field(holder): [f'{_label(holder)} has no such right on the "{queue.name}" queue.']},
        )
    for name in removing:
        remove_perm(RIGHTS[name], holder, queue)
    if "work" in removing and not queue_workers(queue):
        pending = ApprovalRequest.objects.filter(queue=queue, state=ApprovalRequest.State.PENDING).count()
        if pending:
            # Raising rolls the removal back with the rest of the transaction.
            items = "1 item is" if pending == 1 else f"{pending} items are"
            raise ValidationFailed(
                f"{_label(holder)} was not removed.",
                fields={
                    _field(holder): [
                        f'Nobody else can work the "{queue.name}" queue and {items} waiting in it: '
                        "add another reviewer first, or nobody could decide them."
                    ]
                },
            )
    audit_record(
        actor=actor, verb="approval_queue.member_removed", target=queue, data={**_who(holder), "rights": removing}
    )
    return removing


@transaction.atomic
def queue_escalation_group_set(*, actor: User, queue: ApprovalQueue, group: Group | None) -> ApprovalQueue:
    """Set the group that items escalate to ("reassign" steps of the escalation chain); None for nobody.
    Forbidden unless `actor` manages the queue. Open items escalate to the group the queue names when they fire."""
    queue = _locked(actor, queue)
    if queue.escalation_group_id == (group.pk if group else None):
        return queue
    if group is not None and group.name in ROLES:
        raise ValidationFailed(
            "A role is not a team.",
            fields={"escalation_group": [f'"{group.name}" is a role: choose a team or another group.']},
        )
    before = queue.escalation_group.name if queue.escalation_group else None
    queue.escalation_group = group
    queue.save(update_fields=["escalation_group"])
    audit_record(
        actor=actor,
        verb="approval_queue.updated",
        target=queue,
        data={"changed": {"escalation_group": [before, group.name if group else None]}},
    )
    return queue
