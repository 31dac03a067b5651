"""The figures that fault and security tests report: one line each in reports/figures.txt, which
`make test` prints at its end (e.g. "D1 completed 50/50 duplicate_effects 0 ok")."""

from __future__ import annotations

from tests.support.processes import REPO

FIGURES = REPO / "reports" / "figures.txt"


def record_figure(line: str) -> None:
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES.open("a") as figures:
        figures.write(line.rstrip() + "\n")
    print(line)
