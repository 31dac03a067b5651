"""What the retention purge does to chat messages (registered in apps.py; apps/runs/retention.py).

A conversation outlives the runs that answered it: an answer whose text was never read yet gets it from its
run first (`chat_answers_fill`), then the message loses the link, as its foreign key says (SET NULL).
"""

from __future__ import annotations

from apps.assistants.chat_selectors import chat_answers_fill
from apps.assistants.models import ChatMessage


def chat_messages_count_for_runs(run_ids: list[int]) -> dict[str, int]:
    return {"chat messages unlinked": ChatMessage.objects.filter(run_id__in=run_ids).count()}


def chat_messages_unlink_for_runs(run_ids: list[int]) -> dict[str, int]:
    messages = ChatMessage.objects.filter(run_id__in=run_ids)
    chat_answers_fill(list(messages.filter(text="", role=ChatMessage.Role.ASSISTANT).select_related("run")))
    return {"chat messages unlinked": messages.update(run=None)}
