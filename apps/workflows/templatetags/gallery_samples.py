"""Template tags for the Run form: the sample files a document field lists (`x-sample-files`, see
apps.workflows.gallery.samples), so a person can download one and upload it to try a template."""

from __future__ import annotations

from typing import Any

from django import template

from apps.workflows.gallery.samples import SampleFile, sample_files_for_field

register = template.Library()


@register.simple_tag
def field_sample_files(schema: Any, field_name: str) -> list[SampleFile]:
    """The sample files the input schema's property `field_name` lists that exist (none for any other field)."""
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return sample_files_for_field(properties.get(field_name)) if isinstance(properties, dict) else []
