"""The pages of "Describe it, get a draft": the section on New workflow, the htmx and plain posts, the proposal
page, and Accept / Edit description / Discard by persona (the permission matrix covers the GET routes)."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from apps.workflows.drafting import workflow_draft_propose
from apps.workflows.models import DraftProposal, Workflow
from tests.workflows.test_drafting import EXPENSES, WEATHER

pytestmark = [pytest.mark.integration, pytest.mark.django_db]

HTMX = {"HTTP_HX_REQUEST": "true"}


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_new_workflow_page_has_the_describe_section(analyst):
    page = client_for(analyst).get(reverse("workflows:create")).content.decode()
    assert '<h2 id="describe-title">Describe the process</h2>' in page
    assert '<label for="draft-description">Process description</label>' in page
    assert 'hx-post="/workflows/new/draft/"' in page and 'hx-indicator="#draft-progress"' in page
    assert "Drafting… this can take a minute." in page
    assert ">Draft</button>" in page
    # The page's own form is unchanged beside it.
    assert "Create and open the builder" in page


def test_drafting_with_htmx_redirects_the_browser_to_the_proposal(analyst, team):
    response = client_for(analyst).post(
        reverse("workflows:draft-propose"), {"description": EXPENSES, "team": team.slug}, **HTMX
    )
    proposal = DraftProposal.objects.get()
    assert response.status_code == 200
    assert response["HX-Redirect"] == reverse("workflows:draft-proposal", args=[proposal.pk])
    assert proposal.team == team


def test_a_short_description_is_refused_beside_the_field_with_the_text_kept(analyst):
    response = client_for(analyst).post(reverse("workflows:draft-propose"), {"description": "Approve it"})
    page = response.content.decode()
    assert response.status_code == 400
    assert re.search(r'field--invalid">\s*<label for="draft-description">', page)
    assert "At least 20 characters" in page and ">Approve it</textarea>" in page
    assert not DraftProposal.objects.exists()


def test_an_answer_still_invalid_lists_its_problems_in_the_section(analyst, team):
    response = client_for(analyst).post(
        reverse("workflows:draft-propose"), {"description": WEATHER, "team": team.slug}, **HTMX
    )
    page = response.content.decode()
    assert response.status_code == 200  # htmx swaps only successful answers
    assert page.lstrip().startswith("<section") and "<html" not in page
    assert "after one repair, so nothing was created" in page
    assert '<ul class="draft-problems">' in page and "is required" in page
    assert "The model's last answer" in page and "weather-oracle" in page
    assert WEATHER in page  # the description is kept for editing
    assert not DraftProposal.objects.exists() and not Workflow.objects.exists()


def test_the_proposal_page_explains_every_step_as_a_diff(analyst, team):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    response = client_for(analyst).get(reverse("workflows:draft-proposal", args=[proposal.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "<h1>Draft: Expense approval</h1>" in page
    assert "5 steps added" in page
    for explanation in proposal.explanations.values():
        assert explanation.replace("'", "&#x27;") in page
    for type_name in ("Extract data", "If", "Human approval", "Transform data"):
        assert f'<span class="tag">{type_name}</span>' in page
    assert "on the &quot;false&quot; branch of &quot;small_amount&quot;" in page or "branch of" in page
    assert '<caption class="visually-hidden">Fields to extract</caption>' in page
    assert "Accept and open the builder" in page and ">Edit description</a>" in page and ">Discard</button>" in page
    assert 'class="diagram' in page


def test_others_do_not_see_a_proposal_and_admins_only_read_it(analyst, team, reviewer, outsider, admin_user_role):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    url = reverse("workflows:draft-proposal", args=[proposal.pk])
    for person in (reviewer, outsider):
        assert client_for(person).get(url).status_code == 404
        assert client_for(person).post(reverse("workflows:draft-accept", args=[proposal.pk])).status_code == 404
        assert client_for(person).post(reverse("workflows:draft-discard", args=[proposal.pk])).status_code == 404
    admin = client_for(admin_user_role)
    page = admin.get(url).content.decode()
    assert "Ana Analyst’s description" in page and "Accept and open the builder" not in page
    assert admin.post(reverse("workflows:draft-accept", args=[proposal.pk])).status_code == 403
    assert admin.post(reverse("workflows:draft-discard", args=[proposal.pk])).status_code == 403
    proposal.refresh_from_db()
    assert proposal.state == DraftProposal.State.PROPOSED and not Workflow.objects.exists()


def test_edit_description_brings_the_text_back_to_the_form(analyst, team, reviewer):
    proposal = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    url = reverse("workflows:create") + f"?proposal={proposal.pk}"
    page = client_for(analyst).get(url).content.decode()
    assert f">{EXPENSES}</textarea>" in page
    assert f'<option value="{team.slug}" selected>' in page
    # Nobody else's description is filled in (nor is its existence told).
    reviewer.groups.add(*analyst.groups.all())
    assert f">{EXPENSES}</textarea>" not in client_for(reviewer).get(url).content.decode()


def test_accept_opens_the_builder_and_discard_goes_back(analyst, team):
    client = client_for(analyst)
    accepted = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    response = client.post(reverse("workflows:draft-accept", args=[accepted.pk]), {"name": "Team expenses"})
    assert response.status_code == 302 and response["Location"] == reverse("workflows:editor", args=["team-expenses"])
    assert Workflow.objects.get().name == "Team expenses"
    page = client.get(reverse("workflows:draft-proposal", args=[accepted.pk])).content.decode()
    assert "Accepted." in page and "Accept and open the builder" not in page

    discarded = workflow_draft_propose(actor=analyst, description=EXPENSES, team=team)
    response = client.post(reverse("workflows:draft-discard", args=[discarded.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("workflows:create")
    discarded.refresh_from_db()
    assert discarded.state == DraftProposal.State.DISCARDED
    assert Workflow.objects.count() == 1
    # Accepting what was discarded is refused, with the reason on the proposal page.
    response = client.post(reverse("workflows:draft-accept", args=[discarded.pk]), follow=True)
    assert "This draft was discarded already." in response.content.decode()
    assert Workflow.objects.count() == 1


def test_drafts_past_the_limit_are_refused_with_retry_after_and_the_text_kept_and_others_go_on(
    analyst, reviewer, settings
):
    """A draft holds a web thread for as long as the model takes: one person gets AIOS_DRAFTS_PER_MINUTE a minute,
    on the plain page and with htmx alike, a mistyped form costs none of them, and another analyst is unaffected."""
    import time

    from apps.accounts.services import team_create, user_create
    from apps.inference.models import InferenceCall
    from tests.conftest import PASSWORD

    settings.AIOS_DRAFTS_PER_MINUTE = 1
    alba = user_create(username="alba", password=PASSWORD, roles=["analyst"], first_name="Alba")
    # The demo's answer sends claims to the queue of the team "claims".
    claims = team_create(name="Claims", members=[analyst, reviewer, alba])
    form = {"description": EXPENSES, "team": claims.slug}
    if time.time() % 60 > 40:  # the requests below fall in one minute of the limit
        time.sleep(60 - time.time() % 60 + 0.05)
    url = reverse("workflows:draft-propose")
    ana = client_for(analyst)
    assert ana.post(url, {"description": "Approve it"}).status_code == 400
    assert ana.post(url, form).status_code == 302
    calls = InferenceCall.objects.count()

    plain = ana.post(url, form)
    page = plain.content.decode()
    assert plain.status_code == 429 and 1 <= int(plain["Retry-After"]) <= 60
    assert re.search(r'callout--error" role="alert"><p><strong>You have asked for 1 draft in the last minute', page)
    assert "field--invalid" not in page and f">{EXPENSES}</textarea>" in page

    swapped = ana.post(url, form, **HTMX)
    section = swapped.content.decode()
    assert swapped.status_code == 200 and 1 <= int(swapped["Retry-After"]) <= 60  # htmx swaps only successes
    assert section.lstrip().startswith("<section") and "You have asked for 1 draft in the last minute" in section
    assert f">{EXPENSES}</textarea>" in section
    assert InferenceCall.objects.count() == calls and DraftProposal.objects.count() == 1

    assert client_for(alba).post(url, form).status_code == 302
    assert DraftProposal.objects.filter(author=alba).count() == 1
