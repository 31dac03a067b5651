"""What the retention purge does to evaluation reports (registered in apps.py; apps/runs/retention.py).

A report is the evidence behind a publish gate and outlives its case runs: the purge removes a finished
report's test runs and unlinks its results (each keeps its inputs, expected and actual fields, cost, latency
and verdict; the report page says "No test run"). A report still scoring holds its case runs back.
"""

from __future__ import annotations

from apps.evaluations.models import EvaluationReport, EvaluationResult


def evaluation_runs_to_keep(run_ids: list[int]) -> dict[int, str]:
    """The runs among `run_ids` that a report still running needs to score."""
    return dict.fromkeys(
        EvaluationResult.objects.filter(run_id__in=run_ids, report__state=EvaluationReport.State.RUNNING)
        .values_list("run_id", flat=True)
        .distinct(),
        "an evaluation report is still scoring it",
    )


def evaluation_results_count_for_runs(run_ids: list[int]) -> dict[str, int]:
    return {"evaluation results unlinked": EvaluationResult.objects.filter(run_id__in=run_ids).count()}


def evaluation_results_unlink_for_runs(run_ids: list[int]) -> dict[str, int]:
    return {"evaluation results unlinked": EvaluationResult.objects.filter(run_id__in=run_ids).update(run=None)}
