"""The template gallery of "New workflow": export files shipped with the product.

Each `*.aios.yaml` here is an export document (apps/workflows/exchange.py), so templates and exports share
one format. A file may hold several documents: the ones before the last are workflows the last one runs
(a for-each's per-item workflow); they are created and published with it unless they exist already.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from django.db import transaction

from apps.accounts.models import Team, User
from apps.core.exceptions import ApplicationError, ValidationFailed
from apps.workflows.models import Workflow
from apps.workflows.services import workflow_create, workflow_draft_save, workflow_version_publish

GALLERY = Path(__file__).parent


@dataclass(frozen=True)
class GalleryTemplate:
    """One template: its file's slug, the main workflow's name and description, and its documents."""

    slug: str
    name: str
    description: str
    step_count: int
    documents: tuple[dict[str, Any], ...]

    @property
    def supporting(self) -> tuple[dict[str, Any], ...]:
        return self.documents[:-1]


@cache
def _load(path: Path) -> GalleryTemplate:
    documents = tuple(document for document in yaml.safe_load_all(path.read_text()) if document)
    main = documents[-1]
    return GalleryTemplate(
        slug=path.name.removesuffix(".aios.yaml"),
        name=str(main["metadata"]["name"]),
        description=str(main["metadata"].get("description", "")),
        step_count=len(main["spec"]["graph"]["steps"]),
        documents=documents,
    )


def gallery_templates() -> list[GalleryTemplate]:
    """Every template, by name."""
    return sorted((_load(path) for path in GALLERY.glob("*.aios.yaml")), key=lambda template: template.name)


def gallery_template_get(slug: str) -> GalleryTemplate:
    for template in gallery_templates():
        if template.slug == slug:
            return template
    raise ValidationFailed(
        "Choose a template from the gallery.", fields={"template": [f'There is no template "{slug}".']}
    )


def _supporting_workflow(actor: User, document: dict[str, Any], team: Team | None) -> Workflow:
    """A workflow the template runs: the existing one with that slug, else created from the document and
    published. When it cannot be published for this person yet (it names a connection or a queue she does not
    have), it stays a draft to adapt: the main workflow's draft then says it waits for that publication, and
    nothing the template holds is lost."""
    metadata = document["metadata"]
    existing = Workflow.objects.filter(slug=metadata["slug"]).first()
    if existing is not None:
        return existing
    workflow = workflow_create(
        actor=actor,
        name=str(metadata["name"]),
        description=str(metadata.get("description", "")),
        team=team,
        baseline_minutes_per_case=Decimal(str(metadata.get("baseline_minutes_per_case", 0))),
    )
    draft = workflow_draft_save(
        actor=actor,
        workflow=workflow,
        graph=copy.deepcopy(document["spec"]["graph"]),
        input_schema=copy.deepcopy(document["spec"]["input_schema"]),
        expected_revision=None,
        label="Create from the gallery",
    )
    try:
        with transaction.atomic():
            workflow_version_publish(actor=actor, version=draft, note="Created from the gallery template.")
    except ApplicationError:
        pass  # left as a draft (see above)
    return workflow


@transaction.atomic
def workflow_create_from_template(*, actor: User, template: str, name: str = "", team: Team | None = None) -> Workflow:
    """A new workflow whose draft is the template's (and the workflows it runs, published); the analyst
    reviews the draft, adapts addresses and queues, and publishes it."""
    chosen = gallery_template_get(template)
    for document in chosen.supporting:
        _supporting_workflow(actor, document, team)
    main = chosen.documents[-1]
    metadata = main["metadata"]
    workflow = workflow_create(
        actor=actor,
        name=name.strip() or str(metadata["name"]),
        description=str(metadata.get("description", "")),
        team=team,
        baseline_minutes_per_case=Decimal(str(metadata.get("baseline_minutes_per_case", 0))),
    )
    workflow_draft_save(
        actor=actor,
        workflow=workflow,
        graph=copy.deepcopy(main["spec"]["graph"]),
        input_schema=copy.deepcopy(main["spec"]["input_schema"]),
        expected_revision=None,
        label=f'Create from the "{chosen.name}" template',
    )
    return workflow
