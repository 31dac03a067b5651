"""The audit viewer's forms: the event filters (all in the URL) and the export range."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django import forms
from django.db.models import QuerySet

from apps.audit.models import RUN_STREAM_PREFIX, AuditEvent
from apps.audit.selectors import audit_event_values

DATETIME_INPUT = forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M")
DATETIME_FORMATS = ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d"]


class _RangeMixin(forms.Form):
    """A time range, `since` inclusive and `until` exclusive, in the site's time zone."""

    since = forms.DateTimeField(required=False, label="From", widget=DATETIME_INPUT, input_formats=DATETIME_FORMATS)
    until = forms.DateTimeField(required=False, label="Until", widget=DATETIME_INPUT, input_formats=DATETIME_FORMATS)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        since, until = data.get("since"), data.get("until")
        if isinstance(since, datetime) and isinstance(until, datetime) and since >= until:
            self.add_error("until", "Choose a time after “From”.")
        return data


def _stream_for_run(run: int | None) -> str:
    return f"{RUN_STREAM_PREFIX}{run}" if run else ""


class EventFilterForm(_RangeMixin):
    """Filters of the event list. A value that matches nothing that exists (an actor who never acted, a run
    with no events) is an error on its field, not an empty page that looks like "nothing happened"."""

    actor = forms.CharField(required=False, max_length=150, label="Who (user name)")
    verb = forms.ChoiceField(required=False, label="What happened")
    target_type = forms.ChoiceField(required=False, label="Object type")
    target_id = forms.CharField(required=False, max_length=64, label="Object id")
    run = forms.IntegerField(required=False, min_value=1, max_value=2**62, label="Run number")
    stream = forms.CharField(required=False, max_length=200, label="Stream")
    before = forms.IntegerField(required=False, min_value=1, max_value=2**62, widget=forms.HiddenInput)

    field_order = ["actor", "verb", "target_type", "target_id", "run", "since", "until", "stream", "before"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        verb_field = self.fields["verb"]
        type_field = self.fields["target_type"]
        assert isinstance(verb_field, forms.ChoiceField) and isinstance(type_field, forms.ChoiceField)
        verb_field.choices = [("", "Any"), *((verb, verb) for verb in audit_event_values("verb"))]
        type_field.choices = [("", "Any"), *((name, name) for name in audit_event_values("target_type"))]

    def clean_actor(self) -> str:
        actor = str(self.cleaned_data.get("actor") or "").strip()
        if actor and not AuditEvent.objects.filter(actor_label=actor).exists():
            raise forms.ValidationError(f"No event was recorded for “{actor}”. User names are exact.")
        return actor

    def clean_stream(self) -> str:
        stream = str(self.cleaned_data.get("stream") or "").strip()
        if stream and not AuditEvent.objects.filter(stream=stream).exists():
            raise forms.ValidationError("No stream has this name.")
        return stream

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        run = data.get("run")
        if run and "run" not in self.errors and not AuditEvent.objects.filter(stream=_stream_for_run(run)).exists():
            self.add_error("run", f"Run {run} has no audit events.")
        if data.get("target_id") and not data.get("target_type"):
            self.add_error("target_type", "Choose the object type that the id belongs to.")
        return data

    def apply(self, events: QuerySet[AuditEvent]) -> QuerySet[AuditEvent]:
        """`events` narrowed by the cleaned filters (not the page cursor)."""
        data = self.cleaned_data
        if data.get("actor"):
            events = events.filter(actor_label=data["actor"])
        if data.get("verb"):
            events = events.filter(verb=data["verb"])
        if data.get("target_type"):
            events = events.filter(target_type=data["target_type"])
            if data.get("target_id"):
                events = events.filter(target_id=data["target_id"])
        if data.get("run"):
            events = events.filter(stream=_stream_for_run(data["run"]))
        if data.get("stream"):
            events = events.filter(stream=data["stream"])
        if data.get("since"):
            events = events.filter(created_at__gte=data["since"])
        if data.get("until"):
            events = events.filter(created_at__lt=data["until"])
        return events

    @property
    def is_filtered(self) -> bool:
        return any(self.cleaned_data.get(name) for name in self.fields if name != "before")


class ExportForm(_RangeMixin):
    """What to export: a time range, one run or one stream, or both; at least one of them."""

    run = forms.IntegerField(required=False, min_value=1, max_value=2**62, label="Run number")
    stream = forms.CharField(required=False, max_length=200, label="Stream")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        run, stream = data.get("run"), str(data.get("stream") or "").strip()
        if run and stream:
            self.add_error("stream", "Give a run number or a stream, not both.")
        elif run:
            data["stream"] = _stream_for_run(run)
        else:
            data["stream"] = stream
        if not self.errors and not (data.get("since") or data.get("until") or data["stream"]):
            self.add_error(None, "Choose a period, a run or a stream to export.")
        if data.get("stream") and not self.errors and not AuditEvent.objects.filter(stream=data["stream"]).exists():
            self.add_error("run" if run else "stream", "There are no audit events for it.")
        return data
