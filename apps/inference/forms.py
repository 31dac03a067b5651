"""The model endpoint form of the admin pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django import forms

from apps.inference.models import ModelEndpoint, url_origin


class ModelEndpointForm(forms.ModelForm):
    """Endpoint settings. The token is write-only: never rendered back, left as is when the field is empty,
    removed with "remove token"."""

    # Model servers on an internal network usually speak plain HTTP: a URL without a scheme means http.
    url = forms.URLField(max_length=500, assume_scheme="http", help_text="Base URL, e.g. http://gpu-1:8080")
    token = forms.CharField(
        required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Bearer token for the server. Leave empty to keep the stored one.",
    )
    remove_token = forms.BooleanField(required=False, label="Remove the stored token")

    class Meta:
        model = ModelEndpoint
        fields = list(ModelEndpoint.SETTINGS)
        labels = {
            "price_input_per_1k": "Price per 1,000 input tokens",
            "price_output_per_1k": "Price per 1,000 output tokens",
            "max_in_flight": "Maximum requests in flight",
            "timeout_seconds": "Timeout (seconds)",
            "is_default": "Default endpoint (for steps that name none)",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # What is stored, before cleaning copies the posted values onto the instance.
        self.stored_url = self.instance.url if self.instance.pk else ""
        self.stored_token = bool(self.instance.pk and self.instance.has_token)
        if self.instance.pk:
            # Steps refer to endpoints by name: renaming one would break every published version using it.
            self.fields["name"].disabled = True
            self.fields["name"].help_text = "Steps refer to the endpoint by this name, so it cannot change."

    def clean_url(self) -> str:
        url = str(self.cleaned_data["url"])
        parts = urlsplit(url)
        if parts.username or parts.password or parts.query or parts.fragment:
            raise forms.ValidationError(
                "Give the base URL only: no user name, password, query or fragment (put a token in the token field)."
            )
        return url

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if cleaned.get("price_input_per_1k") is not None and cleaned["price_input_per_1k"] < 0:
            self.add_error("price_input_per_1k", "A price cannot be negative.")
        if cleaned.get("price_output_per_1k") is not None and cleaned["price_output_per_1k"] < 0:
            self.add_error("price_output_per_1k", "A price cannot be negative.")
        timeout = cleaned.get("timeout_seconds")
        if timeout is not None and not 1 <= timeout <= 3600:
            self.add_error("timeout_seconds", "Between 1 and 3,600 seconds.")
        if cleaned.get("max_in_flight") == 0:
            self.add_error("max_in_flight", "At least 1.")
        if cleaned.get("is_default") and not cleaned.get("enabled"):
            self.add_error("enabled", "The default endpoint must be enabled.")
        if cleaned.get("is_default") and cleaned.get("kind") == ModelEndpoint.Kind.TEI:
            self.add_error("is_default", "The default endpoint answers LLM steps: an embeddings server cannot be it.")
        url = cleaned.get("url")
        if (
            self.stored_token
            and url
            and url_origin(url) != url_origin(self.stored_url)
            and not cleaned.get("token")
            and not cleaned.get("remove_token")
        ):
            # The stored token was entered for the old server; saving would send it to the new one at once (the
            # page probes after saving).
            self.add_error(
                "token",
                "Enter the token again: the URL's scheme, host or port changed, and a stored token is only sent to "
                'the server it was entered for. Or tick "Remove the stored token".',
            )
        return cleaned

    def token_change(self) -> str | None:
        """None: keep the stored token; "": remove it; else the new token."""
        if self.cleaned_data.get("remove_token"):
            return ""
        return self.cleaned_data.get("token") or None
