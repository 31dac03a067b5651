from __future__ import annotations

from django.apps import AppConfig


class RunsConfig(AppConfig):
    """Runs of published workflow versions and the engine that executes them."""

    name = "apps.runs"
    label = "runs"

    def ready(self) -> None:
        from apps.runs.demo import seed_process_demo
        from apps.runs.documents import run_input_document_for_step
        from apps.runs.readers import runs_needing_attention
        from apps.steps import readers
        from apps.steps.library import doc_parse
        from apps.workflows import demo

        # The doc.parse step reads stored documents through the runs app, which decides what a run may read.
        doc_parse.RUN_DOCUMENT_READERS.append(run_input_document_for_step)
        demo.demo_extensions.append(seed_process_demo)
        # The assistant's lookup of runs needing attention (assistant.lookup) reads through this app.
        readers.READERS["my_runs_needing_attention"] = runs_needing_attention
