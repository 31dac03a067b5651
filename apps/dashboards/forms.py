"""The dashboards' filter, read from the URL: a period (a preset or a custom start and end), and optionally a team,
a process (workflow) and one of its versions. Every value is checked against what the user may read, so a value
that does not exist, or that she may not see, is a form error shown on the page (never a 500, never a hint that
a hidden workflow exists)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, cast
from urllib.parse import urlencode

from django import forms
from django.db.models import QuerySet
from django.utils import timezone

from apps.accounts.models import Team
from apps.dashboards.selectors import DashboardFilter, dashboard_workflows_for_user
from apps.workflows.models import Workflow, WorkflowVersion

PERIODS = [
    ("7", "Last 7 days"),
    ("30", "Last 30 days"),
    ("90", "Last 90 days"),
    ("month", "This month"),
    ("custom", "Custom dates"),
]
DEFAULT_PERIOD = "30"
# A custom range longer than this is refused: the charts draw one point per day, and a manager comparing years
# wants a different view than a daily one.
MAX_DAYS = 366
EARLIEST = date(2000, 1, 1)


class FilterForm(forms.Form):
    """Parses the dashboard filter from request.GET for `user`; `dashboard_filter()` gives the DashboardFilter once
    valid. Empty fields mean "all" (every team, every process she may read, every version)."""

    period = forms.ChoiceField(choices=PERIODS, required=False, label="Period")
    start = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    end = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"))
    team = forms.ChoiceField(
        required=False, label="Team", error_messages={"invalid_choice": "There is no team %(value)s among yours."}
    )
    process = forms.ChoiceField(
        required=False,
        label="Process",
        error_messages={"invalid_choice": "There is no process %(value)s among those you may read."},
    )
    version = forms.ChoiceField(
        required=False,
        label="Version",
        error_messages={"invalid_choice": "The process has no published version %(value)s."},
    )

    def __init__(
        self,
        data: Any = None,
        *,
        user: Any,
        workflow: Workflow | None = None,
        today: date | None = None,
        with_version: bool = True,
    ) -> None:
        """`workflow` fixes the process (a process page names it in its path, so the form offers no choice).
        `with_version` False drops the version field: a queue's and an endpoint's figures are kept per process,
        not per version, so offering it would filter nothing while seeming to."""
        if data is not None:
            data = data.copy()
            # No period means the default one; dates typed into From and To mean a custom period, whatever the
            # period list still says (someone who typed dates wants those dates).
            if data.get("start") and data.get("end"):
                data["period"] = "custom"
            elif not data.get("period"):
                data["period"] = DEFAULT_PERIOD
        super().__init__(data)
        self.user = user
        self.fixed_workflow = workflow
        self.today = today or timezone.localdate()
        self.workflows: QuerySet[Workflow] = dashboard_workflows_for_user(user).select_related("team").order_by("name")
        workflows = list(self.workflows)
        # A workflow may belong to no team (a personal one): it is offered as a process, not under a team.
        teams = {workflow.team.slug: workflow.team for workflow in workflows if workflow.team is not None}
        self.team_choices = dict(sorted(teams.items(), key=lambda item: item[1].name))
        cast(forms.ChoiceField, self.fields["team"]).choices = [("", "All teams")] + [
            (slug, team.name) for slug, team in self.team_choices.items()
        ]
        self.workflow_choices = {workflow.slug: workflow for workflow in workflows}
        cast(forms.ChoiceField, self.fields["process"]).choices = [("", "All processes")] + [
            (workflow.slug, workflow.name) for workflow in workflows
        ]
        chosen = workflow or self.workflow_choices.get(str((data or {}).get("process", "")))
        self.version_choices: dict[str, WorkflowVersion] = {}
        if chosen is not None:
            versions = WorkflowVersion.objects.filter(workflow=chosen, state=WorkflowVersion.State.PUBLISHED)
            self.version_choices = {str(version.number): version for version in versions.order_by("-number")}
        cast(forms.ChoiceField, self.fields["version"]).choices = [("", "All versions")] + [
            (number, f"Version {number}") for number in self.version_choices
        ]
        if not with_version:
            del self.fields["version"]
        if workflow is not None:
            # A process page names its process in the path, and a process has one team: neither is a choice.
            del self.fields["process"]
            del self.fields["team"]

    def clean_team(self) -> Team | None:
        value = self.cleaned_data.get("team") or ""
        return self.team_choices.get(value) if value else None

    def clean_process(self) -> Workflow | None:
        value = self.cleaned_data.get("process") or ""
        return self.workflow_choices.get(value) if value else None

    def full_clean(self) -> None:
        super().full_clean()
        # A field in error names its message for screen readers (the template gives it this id).
        for name in self.errors:
            if name in self.fields:
                self.fields[name].widget.attrs.update(
                    {"aria-invalid": "true", "aria-describedby": f"{self[name].auto_id}-error"}
                )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        period = cleaned.get("period") or DEFAULT_PERIOD
        cleaned["period"] = period
        if period == "custom":
            start, end = cleaned.get("start"), cleaned.get("end")
            if start is None and "start" not in self.errors:
                self.add_error("start", "Give the first day of the period.")
            if end is None and "end" not in self.errors:
                self.add_error("end", "Give the last day of the period.")
            if start and end:
                if start > end:
                    self.add_error("end", "The last day comes before the first.")
                elif (end - start).days + 1 > MAX_DAYS:
                    self.add_error("end", f"Choose at most {MAX_DAYS} days.")
                elif start < EARLIEST:
                    self.add_error("start", f"Choose a day from {EARLIEST:%d %b %Y} on.")
                elif end > self.today:
                    # Nothing has happened after today; and the day-by-day series must never step past the
                    # calendar's last day (9999-12-31 overflowed).
                    self.add_error("end", f"Choose a last day up to today ({self.today:%d %b %Y}).")
        team, process = cleaned.get("team"), cleaned.get("process")
        if team is not None and process is not None and process.team_id != team.pk:
            self.add_error("process", f"{process.name} belongs to another team than {team.name}.")
        version = cleaned.get("version")
        if version and not self.version_choices and "version" not in self.errors:
            self.add_error("version", "Choose a process first, then one of its versions.")
        return cleaned

    def period_bounds(self) -> tuple[date, date]:
        period = self.cleaned_data["period"]
        if period == "custom":
            return self.cleaned_data["start"], self.cleaned_data["end"]
        if period == "month":
            return self.today.replace(day=1), self.today
        return self.today - timedelta(days=int(period) - 1), self.today

    def chosen_workflow(self) -> Workflow | None:
        return self.fixed_workflow or self.cleaned_data.get("process")

    def chosen_version(self) -> WorkflowVersion | None:
        value = self.cleaned_data.get("version") or ""
        return self.version_choices.get(value) if value else None

    def dashboard_filter(self) -> DashboardFilter:
        """The filter the form describes (call only when valid)."""
        start, end = self.period_bounds()
        team = self.cleaned_data.get("team")
        workflow = self.chosen_workflow()
        version = self.chosen_version()
        return DashboardFilter(
            start=start,
            end=end,
            team_id=team.pk if team else None,
            workflow_id=workflow.pk if workflow else None,
            version_id=version.pk if version else None,
        )

    def query(self) -> str:
        """The filter as a query string (without "?"), for widget fragments, CSV links and the digest."""
        params = {"period": self.cleaned_data["period"]}
        if params["period"] == "custom":
            params["start"] = self.cleaned_data["start"].isoformat()
            params["end"] = self.cleaned_data["end"].isoformat()
        if self.cleaned_data.get("team"):
            params["team"] = self.cleaned_data["team"].slug
        if self.fixed_workflow is None and self.cleaned_data.get("process"):
            params["process"] = self.cleaned_data["process"].slug
        if self.cleaned_data.get("version"):
            params["version"] = self.cleaned_data["version"]
        return urlencode(params)
