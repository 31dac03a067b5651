"""The email digest: each person's inbox notifications not yet mailed, in one message with links that need a
signed-in session. A mail never carries a decision button or a token: deciding happens in the inbox only."""

from __future__ import annotations

from django.conf import settings
from django.core.mail import EmailMessage
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.approvals.models import Notification

DIGEST_LIMIT = 50


def public_url(path: str) -> str:
    """An absolute link to `path` on the first public address the product is served at."""
    return settings.AIOS_PUBLIC_URLS[0].rstrip("/") + path


def digest_text(user: User, notifications: list[Notification]) -> str:
    lines = [f"Hello {user.display_name},", "", "Here is what happened in your approval inbox:", ""]
    for item in notifications[:DIGEST_LIMIT]:
        when = timezone.localtime(item.created_at).strftime("%d %b %H:%M")
        link = public_url(reverse("approvals:item", args=[item.request_id])) if item.request_id else ""
        lines.append(f"- {when}  {item.text}")
        if link:
            lines.append(f"  {link}")
    if len(notifications) > DIGEST_LIMIT:
        lines.append(f"- and {len(notifications) - DIGEST_LIMIT} more")
    lines += [
        "",
        f"Open your inbox: {public_url(reverse('approvals:inbox'))}",
        "The links ask you to sign in; nothing can be decided from this email.",
    ]
    return "\n".join(lines)


def digests_send() -> int:
    """Mail every person with unmailed notifications one digest; returns how many mails went out. Each
    person's notifications are marked mailed in the transaction that sends, so a failed send is retried by the
    next run and a repeated run sends nothing twice."""
    sent = 0
    user_ids = list(
        Notification.objects.filter(mailed_at__isnull=True).values_list("user_id", flat=True).distinct().order_by()
    )
    for user_id in user_ids:
        with transaction.atomic():
            user = User.objects.filter(pk=user_id, is_active=True).first()
            pending = list(
                Notification.objects.select_for_update(skip_locked=True)
                .filter(user_id=user_id, mailed_at__isnull=True)
                .order_by("created_at", "pk")
            )
            if not pending:
                continue
            if user is None or not user.email:
                # Nobody to mail: marked, so they stop being looked at; the badge still shows them.
                Notification.objects.filter(pk__in=[n.pk for n in pending]).update(mailed_at=timezone.now())
                continue
            message = EmailMessage(
                subject=f"AIOS: {len(pending)} update{'s' if len(pending) != 1 else ''} in your approval inbox",
                body=digest_text(user, pending),
                to=[user.email],
            )
            message.send(fail_silently=False)
            Notification.objects.filter(pk__in=[n.pk for n in pending]).update(mailed_at=timezone.now())
            sent += 1
    return sent
