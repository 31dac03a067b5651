"""Writes about model endpoints: create, change, probe, enable and disable; every change audited."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from apps.accounts.models import User
from apps.audit.services import audit_record
from apps.core.exceptions import ApplicationError, Conflict
from apps.inference import client
from apps.inference.models import EndpointObservation, ModelEndpoint, url_origin


def _snapshot(endpoint: ModelEndpoint) -> dict[str, Any]:
    data = {name: getattr(endpoint, name) for name in ModelEndpoint.SETTINGS}
    data["url"] = client.redact_url(endpoint.url)
    data["has_token"] = endpoint.has_token
    return data


@transaction.atomic
def endpoint_save(*, actor: User | None, endpoint: ModelEndpoint, token: str | None = None) -> ModelEndpoint:
    """Create or change an endpoint (a validated, unsaved-or-changed instance, e.g. from the form).

    `token`: None keeps the stored one, "" removes it, anything else replaces it. A stored token is only ever
    sent to the origin (scheme, host, port) it was entered for: when the URL's origin changes and no new token
    is given, the stored one is removed (audited as `token_cleared`). Making an endpoint the default takes the
    mark from the previous default. Audited with the changed fields (never the token).
    """
    creating = endpoint.pk is None
    stored = None if creating else ModelEndpoint.objects.get(pk=endpoint.pk)
    before = None if stored is None else _snapshot(stored)
    token_cleared = (
        stored is not None and token is None and stored.has_token and url_origin(stored.url) != url_origin(endpoint.url)
    )
    if token_cleared:
        token = ""
    if token is not None:
        endpoint.token = token
    if endpoint.is_default:
        ModelEndpoint.objects.filter(is_default=True).exclude(pk=endpoint.pk).update(is_default=False)
    endpoint.save()
    after = _snapshot(endpoint)
    changed = after if before is None else {k: v for k, v in after.items() if before.get(k) != v}
    if token is not None and not creating:
        changed["token_changed"] = True  # replaced or removed; never its value
    if token_cleared:
        changed["token_cleared"] = "the URL's origin changed"  # noqa: S105 - a reason, not a credential
    audit_record(
        actor=actor,
        verb="model_endpoint.created" if creating else "model_endpoint.changed",
        target=endpoint,
        data={"fields": changed},
    )
    return endpoint


@transaction.atomic
def endpoint_set_enabled(*, actor: User | None, endpoint: ModelEndpoint, enabled: bool) -> ModelEndpoint:
    """Enable or disable an endpoint. Steps that name a disabled endpoint fail with a clear error; the
    default endpoint cannot be disabled while it is the default (steps without a model would fail)."""
    if not enabled and endpoint.is_default:
        raise Conflict(f'"{endpoint.name}" is the default endpoint: make another one the default first.')
    endpoint.enabled = enabled
    endpoint.save(update_fields=["enabled", "updated_at"])
    audit_record(actor=actor, verb="model_endpoint.enabled" if enabled else "model_endpoint.disabled", target=endpoint)
    return endpoint


def _probe_info(endpoint: ModelEndpoint) -> dict[str, Any]:
    """What the server says about itself: TGI and TEI /info, or an OpenAI-compatible /v1/models.
    Raises InferenceError (or ApplicationError for a token that no longer decrypts)."""
    token = endpoint.token or None
    timeout = min(endpoint.timeout_seconds, 10)
    try:
        return client.server_info(endpoint.url, token=token, timeout=timeout)
    except client.InferenceError:
        if endpoint.kind != ModelEndpoint.Kind.OPENAI:
            raise
    return client.served_model_info(endpoint.url, token=token, timeout=timeout, served_model=endpoint.served_model)


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def endpoint_probe(*, actor: User | None, endpoint: ModelEndpoint) -> ModelEndpoint:
    """Ask the server what it serves and record model id, revision and limits (or why it failed).

    A failed probe is recorded, not raised: the page shows the reason. The network calls happen outside
    any transaction, and only the probe's own fields are written, so an admin's concurrent change to the
    endpoint's settings is never overwritten with what this instance had loaded.
    """
    fields: dict[str, Any] = {"probed_at": timezone.now()}
    try:
        info = _probe_info(endpoint)
    except (client.InferenceError, ApplicationError) as error:
        fields["probe_error"] = str(error)[:2000]
    else:
        max_input = info.get("max_input_tokens") or info.get("max_input_length")
        fields.update(
            probe_error="",
            model_id=str(info.get("model_id") or "")[:200],
            revision=str(info.get("model_sha") or "")[:100],
            max_input_tokens=_positive_int(max_input),
            max_total_tokens=_positive_int(info.get("max_total_tokens")),
            server_label=str(info.get("docker_label") or info.get("version") or "")[:100],
        )
    with transaction.atomic():
        # The UPDATE takes the endpoint's row lock first, so two probes of one endpoint record their
        # observations one after the other and never both start a new row for the same revision.
        ModelEndpoint.objects.filter(pk=endpoint.pk).update(**fields)
        for name, value in fields.items():
            setattr(endpoint, name, value)
        observation = None if endpoint.probe_error else _observation_record(endpoint, fields["probed_at"])
        audit_record(
            actor=actor,
            verb="model_endpoint.probed",
            target=endpoint,
            data={
                "ok": not endpoint.probe_error,
                "model_id": endpoint.model_id,
                "revision": endpoint.revision,
                "max_input_tokens": endpoint.max_input_tokens,
                "max_total_tokens": endpoint.max_total_tokens,
                "error": endpoint.probe_error[:500],
                "observation": observation.pk if observation else None,
                "new_observation": bool(observation and observation.probe_count == 1),
            },
        )
    return endpoint


def _observation_record(endpoint: ModelEndpoint, seen_at: datetime) -> EndpointObservation:
    """Extend the newest observation when the server reports what it reported then, else start a new one.
    Called under the endpoint's row lock (see `endpoint_probe`)."""
    reported = {name: getattr(endpoint, name) for name in EndpointObservation.REPORTED}
    newest = EndpointObservation.objects.filter(endpoint=endpoint).order_by("-first_seen_at", "-id").first()
    if newest is not None and newest.reported() == reported:
        EndpointObservation.objects.filter(pk=newest.pk).update(last_seen_at=seen_at, probe_count=F("probe_count") + 1)
        newest.refresh_from_db(fields=["last_seen_at", "probe_count"])
        return newest
    return EndpointObservation.objects.create(
        endpoint=endpoint, first_seen_at=seen_at, last_seen_at=seen_at, probe_count=1, **reported
    )
