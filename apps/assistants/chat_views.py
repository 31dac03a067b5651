"""The Assistant pages: the chat assistants a person may talk to and her conversations, one conversation (send a
message, confirm or decline an action the assistant asks her to confirm). Only she sees her conversations; the
answer being written streams over /ws/assistant/messages/<id>/ (apps/assistants/consumers.py)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from apps.assistants.chat_selectors import (
    chat_call_get_for_user,
    chat_conversation,
    chat_session_get_for_user,
    chat_session_list_for_user,
    chat_trigger_get_for_user,
    chat_trigger_list_for_user,
)
from apps.assistants.chat_services import MESSAGE_MAX_LENGTH, chat_call_answer, chat_message_send, chat_session_start
from apps.assistants.models import ChatSession
from apps.core.exceptions import ApplicationError, ValidationFailed


@login_required
def chat_index(request: HttpRequest) -> HttpResponse:
    """The assistants she may talk to (each with "New conversation") and her conversations, newest first."""
    context = {
        "assistants": chat_trigger_list_for_user(request.user),
        "sessions": chat_session_list_for_user(request.user)[:100],
    }
    return render(request, "assistants/chat_index.html", context)


@login_required
@require_POST
def chat_start(request: HttpRequest, trigger_id: int) -> HttpResponse:
    """Start a conversation with an assistant and open it."""
    trigger = chat_trigger_get_for_user(request.user, trigger_id=trigger_id)
    try:
        session = chat_session_start(actor=request.user, trigger=trigger)  # type: ignore[arg-type]
    except ApplicationError as error:
        messages.error(request, error.message)
        return redirect("chat:index")
    return redirect("chat:session", session_id=session.pk)


def _session_page(request: HttpRequest, session: ChatSession, **extra: object) -> dict[str, object]:
    return {
        "session": session,
        "conversation": chat_conversation(session),
        "greeting": session.trigger.config.get("greeting", ""),
        "max_length": MESSAGE_MAX_LENGTH,
        "text": "",
        "errors": {},
        "refusal": "",
        **extra,
    }


@login_required
@require_http_methods(["GET", "POST"])
def chat_session(request: HttpRequest, session_id: int) -> HttpResponse:
    """One conversation: its messages in order and the composer. Sending answers with the page again (the new
    answer streams into it); a refused message stays in the composer with the reason."""
    session = chat_session_get_for_user(request.user, session_id=session_id)
    if request.method == "POST":
        text = request.POST.get("text", "")
        try:
            answer = chat_message_send(actor=request.user, session=session, text=text)  # type: ignore[arg-type]
        except ValidationFailed as invalid:
            fields = dict(invalid.fields)
            errors = {"text": fields.pop("text", [])} if "text" in fields else {}
            refusal = "" if errors else invalid.message + " " + " ".join(" ".join(v) for v in fields.values())
            context = _session_page(request, session, text=text, errors=errors, refusal=refusal.strip())
            return render(request, "assistants/chat_session.html", context, status=400)
        except ApplicationError as error:
            context = _session_page(request, session, text=text, refusal=error.message)
            return render(request, "assistants/chat_session.html", context, status=error.status_code)
        return redirect(reverse("chat:session", args=[session.pk]) + f"#chat-message-{answer.pk}")
    return render(request, "assistants/chat_session.html", _session_page(request, session))


@login_required
@require_POST
def chat_call(request: HttpRequest, call_id: int) -> HttpResponse:
    """Confirm or decline an action the assistant waits on (the button's `answer`: confirm or decline)."""
    message, call = chat_call_get_for_user(request.user, call_id=call_id)
    answer = request.POST.get("answer", "")
    if answer not in ("confirm", "decline"):
        messages.error(request, "Choose Confirm or Decline.")
    else:
        try:
            chat_call_answer(actor=request.user, message=message, call=call, confirmed=answer == "confirm")  # type: ignore[arg-type]
        except ApplicationError as error:
            messages.error(request, error.message)
        else:
            done = "confirmed: it runs now" if answer == "confirm" else "declined: the assistant is told so"
            messages.success(request, f"{call.name or 'The action'} {done}.")
    url = reverse("chat:session", args=[message.session_id]) + f"#chat-message-{message.pk}"
    # The buttons of an answer pushed over the WebSocket post with htmx (the CSRF header from <body>); they are on
    # this conversation's page, so it reloads (a redirect to the same page and another #fragment would not).
    return HttpResponseClientRefresh() if getattr(request, "htmx", False) else redirect(url)
