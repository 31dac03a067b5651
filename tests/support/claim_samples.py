"""The claims-triage template's sample files (apps/workflows/gallery/samples/): the demo's four sample claims
(apps.workflows.demo.SAMPLE_CLAIMS) laid out as a one-page claim form, written by the project's own PDF writer
(tests.support.documents.pdf_of), so a new user has real PDFs to download and upload on the template's Run page.

The PDFs are committed. After changing a sample claim or the layout, make them again and commit them:

    .venv/bin/python -m tests.support.claim_samples

This lives with the tests, not in the product: it writes with the tests' PDF writer, and the product never
makes these files, it only serves them. tests/workflows/test_gallery.py checks that the committed files are
byte for byte what this makes.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from apps.workflows.demo import SAMPLE_CLAIMS
from tests.support.documents import pdf_of

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "apps" / "workflows" / "gallery" / "samples"
# Helvetica 12 pt between the writer's 72 pt margin and the page's right margin.
LINE_WIDTH = 76


@dataclass(frozen=True)
class SampleClaim:
    """One sample claim as the form shows it: who, which policy, how much, and the claimant's own words."""

    label: str
    file_name: str
    claimant: str
    policy_number: str
    amount: str  # as written in the claim, e.g. "EUR 12,400.00"
    narrative: str

    @property
    def amount_value(self) -> float:
        return float(self.amount.removeprefix("EUR ").replace(",", ""))


def _sample(label: str, claim_text: str) -> SampleClaim:
    heading, narrative = claim_text.split("\n", 1)
    parsed = re.fullmatch(r"Claimant: (?P<claimant>.+)\. Policy (?P<policy>POL-\d+)\.", heading)
    amount = re.search(r"EUR [\d,]+\.\d\d", narrative)
    assert parsed is not None and amount is not None, claim_text
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"\(.*?\)", "", label).lower()).strip("-")
    return SampleClaim(
        label=label,
        file_name=f"claim-{parsed['policy'].lower()}-{slug}.pdf",
        claimant=parsed["claimant"],
        policy_number=parsed["policy"],
        amount=amount.group(),
        narrative=narrative,
    )


SAMPLE_CLAIM_FILES: tuple[SampleClaim, ...] = tuple(
    _sample(sample["label"], sample["claim_text"]) for sample in SAMPLE_CLAIMS
)


def claim_form_lines(claim: SampleClaim) -> list[str]:
    """The claim as the lines of a one-page claim form: the fields first, then what happened, then the claimant's
    declaration."""
    return [
        "INSURANCE CLAIM FORM",
        "Household, motor and liability policies",
        "",
        # A blank line between the fields leaves room above each for the label of its evidence box on the
        # reviewer's page.
        f"Claimant: {claim.claimant}",
        "",
        f"Policy number: {claim.policy_number}",
        "",
        f"Amount claimed: {claim.amount}",
        "",
        "What happened, in the claimant's words:",
        *textwrap.wrap(claim.narrative, LINE_WIDTH),
        "",
        "Declaration: I confirm that the information in this claim is true and",
        "complete, and I agree that the insurer may check it.",
        "",
        f"Signed: {claim.claimant}",
    ]


def claim_pdf(claim: SampleClaim) -> bytes:
    """The sample claim's PDF (the same bytes every time: the writer adds no date or random identifier)."""
    return pdf_of(claim_form_lines(claim))


def write_samples(folder: Path = SAMPLES_DIR) -> list[Path]:
    """Write every sample claim's PDF into `folder`; the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for claim in SAMPLE_CLAIM_FILES:
        path = folder / claim.file_name
        path.write_bytes(claim_pdf(claim))
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_samples():
        print(f"wrote {path.relative_to(SAMPLES_DIR.parents[3])} ({path.stat().st_size} bytes)")
