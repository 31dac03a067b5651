"""The demo: a simplified insurance claims-triage workflow and sample claims to run it on.

The development inference server's demo script (devserver/demo_script.json) answers the
extraction prompt for these sample claims, keyed on their policy numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CLAIM_FIELDS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "claimant": {"type": "string"},
        "policy_number": {"type": "string"},
        "incident_type": {"type": "string", "enum": ["auto", "property", "injury", "theft", "other"]},
        "amount": {"type": "number"},
        "injury_reported": {"type": "boolean"},
        "summary": {"type": "string"},
    },
    "required": ["claimant", "policy_number", "incident_type", "amount", "injury_reported", "summary"],
}

SAMPLE_CLAIMS: list[dict[str, str]] = [
    {
        "label": "Parking-lot bumper (small)",
        "claim_text": (
            "Claimant: Maria Lopez. Policy POL-10442.\n"
            "On 3 November another car reversed into my parked car in the supermarket parking lot and "
            "cracked the rear bumper. Nobody was hurt. The body shop quoted EUR 850.00 for the repair."
        ),
    },
    {
        "label": "Kitchen water leak",
        "claim_text": (
            "Claimant: Tom Becker. Policy POL-20917.\n"
            "A pipe under the kitchen sink burst while we were away for the weekend. The floor and the lower "
            "cabinets are ruined. The contractor's estimate is EUR 12,400.00. No one was injured."
        ),
    },
    {
        "label": "Slip and fall with injury",
        "claim_text": (
            "Claimant: Aisha Khan. Policy POL-31808.\n"
            "I slipped on a wet, unmarked floor at the store and broke my wrist. I was treated at the "
            "hospital and cannot work for six weeks. Medical bills and lost income come to EUR 23,800.00."
        ),
    },
    {
        "label": "Stolen bicycle",
        "claim_text": (
            "Claimant: Daniel Park. Policy POL-48230.\n"
            "My bicycle was stolen from our locked garage during the night; the lock was cut. I reported it "
            "to the police. The bicycle cost EUR 640.00 last spring."
        ),
    },
]

CLAIMS_TRIAGE_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "claim_text": {
            "type": "string",
            "title": "Claim text",
            "description": "The claim as the customer wrote it: who, which policy, what happened, how much.",
            "format": "textarea",
            "minLength": 20,
            "maxLength": 20000,
        }
    },
    "required": ["claim_text"],
    "examples": SAMPLE_CLAIMS,
}

CLAIMS_TRIAGE_GRAPH: dict[str, Any] = {
    "steps": [
        {
            "key": "extract",
            "type": "llm.generate",
            "name": "Extract claim fields",
            "config": {
                "system": "You extract structured fields from insurance claims. Reply with JSON only.",
                "prompt": (
                    "Extract the claimant, policy number, incident type, claimed amount, whether an injury "
                    "is reported, and a one-sentence summary from this insurance claim.\n\n"
                    "Claim:\n{{ input.claim_text }}"
                ),
                "max_new_tokens": 300,
                "output": "json",
                "json_schema": CLAIM_FIELDS_SCHEMA,
            },
        },
        {
            "key": "decide",
            "type": "data.transform",
            "name": "Decide the route",
            "config": {
                "fields": {
                    # A claim whose text looks like it instructs the model never goes straight through,
                    # whatever the model extracted from it.
                    "route": (
                        "size(flags.extract) == 0 && steps.extract.data.amount <= 1000.0 "
                        "&& !steps.extract.data.injury_reported "
                        '&& steps.extract.data.incident_type != "injury" ? "auto_approve" : "adjuster_queue"'
                    ),
                    "reason": (
                        'size(flags.extract) > 0 ? "The claim text looks like it tries to instruct the model: an '
                        'adjuster must review." : steps.extract.data.injury_reported ? "An injury is reported: an '
                        'adjuster must review." : steps.extract.data.amount > 1000.0 ? "The amount is above the '
                        'EUR 1,000 straight-through limit." : "Small claim without injury: approved automatically."'
                    ),
                    "claimant": "steps.extract.data.claimant",
                    "policy_number": "steps.extract.data.policy_number",
                    "amount": "steps.extract.data.amount",
                }
            },
        },
    ]
}


# Upper apps add their part of the demo here (the approvals app: a review workflow and its queue's settings);
# `seed_demo` calls each with the demo analyst and team, inside its transaction.
demo_extensions: list[Callable[[Any, Any], None]] = []
