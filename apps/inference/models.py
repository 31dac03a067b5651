"""Model endpoints (the servers AI steps call) and the record of every call made to them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from django.db import models
from simple_history.models import HistoricalRecords

from apps.core.secrets import secret_decrypt, secret_encrypt


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL, the port filled in from the scheme: where a request with it goes."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower().rstrip("."), port or (443 if scheme == "https" else 80)


class ModelEndpoint(models.Model):
    """A model server, managed by admins: where it is, what it serves (read from its `/info`), what a
    call costs, and how many requests it may have in flight across every worker process.

    Steps name an endpoint by `name`; a step that names none uses the endpoint marked default. The token is
    stored encrypted (`apps.core.secrets`) and never shown again once saved.
    """

    class Kind(models.TextChoices):
        TGI = "tgi", "Text Generation Inference (native API and OpenAI-compatible chat)"
        OPENAI = "openai-compatible", "OpenAI-compatible server (vLLM, SGLang, llama.cpp, TGI)"
        TEI = "tei", "Text Embeddings Inference"

    name = models.SlugField(max_length=64, unique=True, help_text="How steps refer to this endpoint.")
    kind = models.CharField(max_length=24, choices=Kind.choices, default=Kind.TGI)
    url = models.URLField(max_length=500, help_text="Base URL, e.g. http://gpu-1:8080")
    token_encrypted = models.TextField(blank=True)
    served_model = models.CharField(
        max_length=200, blank=True, help_text="The model name OpenAI-compatible servers expect in each request."
    )
    # From the last probe of the server's /info (TGI, TEI) or /v1/models.
    model_id = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    max_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_total_tokens = models.PositiveIntegerField(null=True, blank=True)
    server_label = models.CharField(max_length=100, blank=True)
    probed_at = models.DateTimeField(null=True, blank=True)
    probe_error = models.TextField(blank=True)
    price_input_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    price_output_per_1k = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal("0"))
    max_in_flight = models.PositiveIntegerField(
        default=32, help_text="Requests in flight at once, summed over every worker process."
    )
    timeout_seconds = models.FloatField(default=60.0, help_text="Longest wait for the server (connect, each read).")
    enabled = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords(excluded_fields=["token_encrypted"])

    # What an admin sets (the rest is read from the server by a probe); also what the audit chain records
    # of a change, never the token itself.
    SETTINGS = (
        "name",
        "kind",
        "url",
        "served_model",
        "price_input_per_1k",
        "price_output_per_1k",
        "max_in_flight",
        "timeout_seconds",
        "enabled",
        "is_default",
    )

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=models.Q(is_default=True), name="model_endpoint_one_default"
            ),
            models.CheckConstraint(condition=models.Q(max_in_flight__gte=1), name="model_endpoint_in_flight_positive"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def token(self) -> str:
        return secret_decrypt(self.token_encrypted)

    @token.setter
    def token(self, value: str) -> None:
        self.token_encrypted = secret_encrypt(value)

    @property
    def has_token(self) -> bool:
        return bool(self.token_encrypted)

    @property
    def model_label(self) -> str:
        """Model id and short revision, as provenance shows them."""
        if not self.model_id:
            return self.served_model or "unknown model"
        return f"{self.model_id}@{self.revision[:12]}" if self.revision else self.model_id

    def cost(self, prompt_tokens: int, generated_tokens: int) -> Decimal:
        """What a call with these token counts costs at this endpoint's prices."""
        return (
            self.price_input_per_1k * Decimal(prompt_tokens) + self.price_output_per_1k * Decimal(generated_tokens)
        ) / Decimal(1000)


class InferenceCall(models.Model):
    """One call to a model server: the provenance of an AI output, its metering, and the recording that
    replay reads. Written once, never changed (append-only in the database).

    `run_id` and `step_run_id` are plain columns: runs live in a higher layer, and a call record must
    outlive any clean-up of the run tables. `sequence` numbers the calls of one step attempt (repairs,
    samples, escalations), so a replay finds the recorded answer for each call in order.
    """

    class Status(models.TextChoices):
        OK = "ok", "Succeeded"
        ERROR = "error", "Failed"
        REPLAYED = "replayed", "Replayed from a recording"

    run_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    step_run_id = models.BigIntegerField(null=True, blank=True)
    step_key = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(default=1)
    sequence = models.PositiveIntegerField(default=1)
    purpose = models.CharField(max_length=32, default="generate")
    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.PROTECT, null=True, blank=True, related_name="calls")
    endpoint_name = models.CharField(max_length=64)
    endpoint_url = models.CharField(max_length=500)
    protocol = models.CharField(max_length=16)  # "tgi" (native /generate) or "chat" (OpenAI-compatible)
    model_id = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    template_sha256 = models.CharField(max_length=64, blank=True)
    input_sha256 = models.CharField(max_length=64)
    output_sha256 = models.CharField(max_length=64, blank=True)
    parameters = models.JSONField(default=dict)
    seed = models.BigIntegerField(null=True, blank=True)
    request = models.JSONField(default=dict)
    response = models.JSONField(null=True, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    generated_tokens = models.PositiveIntegerField(default=0)
    ttft_ms = models.FloatField(null=True, blank=True)
    latency_ms = models.FloatField(default=0)
    queue_ms = models.FloatField(default=0, help_text="Time spent waiting for the endpoint's in-flight limit.")
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=Decimal("0"))
    status = models.CharField(max_length=16, choices=Status.choices)
    error = models.TextField(blank=True)
    # When the call began (before any wait for an in-flight slot); the record is stored later, with the step's
    # outcome, so `created_at` says when it was stored, not when the call happened.
    started_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run_id", "step_key", "attempt", "sequence"]
        indexes = [models.Index(fields=["run_id", "step_key", "attempt", "sequence"], name="inference_call_step_idx")]

    def __str__(self) -> str:
        return f"{self.purpose} call {self.sequence} of {self.step_key} in run {self.run_id}"


class EndpointObservation(models.Model):
    """What one endpoint's server reported about itself over a stretch of probes: the revision history that
    a model card shows.

    `endpoint_probe` writes it: a new row when the model, revision, server or limits differ from the
    newest row, else that row's `last_seen_at` and `probe_count` move on. A failed probe observes nothing,
    so a server that was down for a while does not split one revision's stretch in two. Rows are never
    edited otherwise; the probe's audit event says which row it wrote.
    """

    endpoint = models.ForeignKey(ModelEndpoint, on_delete=models.CASCADE, related_name="observations")
    model_id = models.CharField(max_length=200, blank=True)
    revision = models.CharField(max_length=100, blank=True)
    server_label = models.CharField(max_length=100, blank=True)
    max_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_total_tokens = models.PositiveIntegerField(null=True, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    probe_count = models.PositiveIntegerField(default=1)

    # The fields whose change starts a new row.
    REPORTED = ("model_id", "revision", "server_label", "max_input_tokens", "max_total_tokens")

    class Meta:
        ordering = ["endpoint", "-first_seen_at", "-id"]
        indexes = [models.Index(fields=["endpoint", "-first_seen_at"], name="inference_observation_newest")]

    def __str__(self) -> str:
        return f"{self.endpoint_id}: {self.model_id}@{self.revision[:12]} since {self.first_seen_at:%Y-%m-%d}"

    def reported(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.REPORTED}
