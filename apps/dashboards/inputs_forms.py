"""Forms of the KPI inputs pages: they parse and bound what a manager types; the services decide and audit."""

from __future__ import annotations

from decimal import Decimal

from django import forms
from django.core.validators import RegexValidator


class RatesForm(forms.Form):
    """The reviewers' loaded hourly rate and the currency of every money figure."""

    reviewer_hourly_rate = forms.DecimalField(
        label="Reviewer loaded hourly rate",
        min_value=Decimal(0),
        max_digits=10,
        decimal_places=2,
        help_text="What an hour of a reviewer's time costs, salary and overheads included.",
    )
    currency = forms.CharField(
        label="Currency",
        max_length=3,
        min_length=3,
        validators=[RegexValidator(r"^[A-Za-z]{3}$", "Enter a three-letter code like EUR, USD or GBP.")],
        help_text="Three-letter code (ISO 4217).",
    )


class WorkflowInputsForm(forms.Form):
    """A workflow's baseline minutes per case, realisation factor and one-off build cost."""

    baseline_minutes_per_case = forms.DecimalField(
        label="Baseline minutes per case",
        min_value=Decimal(0),
        max_digits=8,
        decimal_places=2,
        help_text="How long a person spent on one case before AIOS.",
    )
    realisation_percent = forms.DecimalField(
        label="Realisation factor (%)",
        min_value=Decimal(0),
        max_value=Decimal(100),
        max_digits=5,
        decimal_places=2,
        help_text="How much of the baseline a finished case really saves (100 % = all of it).",
    )
    build_cost = forms.DecimalField(
        label="One-off build cost",
        required=False,
        min_value=Decimal(0),
        max_digits=14,
        decimal_places=2,
        help_text="What building this automation cost, for the payback period. Leave empty if unknown.",
    )


class EndpointInputsForm(forms.Form):
    """Whether a model endpoint runs on our own GPU, and the hourly price of that GPU."""

    self_hosted = forms.BooleanField(
        label="Runs on our own GPU (self-hosted)",
        required=False,
        help_text="Self-hosted calls cost GPU-seconds × the hourly price; others tokens × the endpoint's prices.",
    )
    gpu_hourly_price = forms.DecimalField(
        label="GPU hourly price",
        required=False,
        min_value=Decimal(0),
        max_digits=10,
        decimal_places=4,
        help_text="What an hour of the GPU costs (hardware amortised, power, hosting).",
    )

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if (
            cleaned.get("self_hosted")
            and cleaned.get("gpu_hourly_price") is None
            and "gpu_hourly_price" not in self.errors
        ):
            self.add_error("gpu_hourly_price", "Enter the hourly price of the GPU this endpoint runs on.")
        return cleaned
