from __future__ import annotations

from django.urls import path

from apps.approvals import views

app_name = "approvals"

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("new/", views.inbox_new, name="new-items"),
    path("next/", views.next_item, name="next"),
    path("items/<int:request_id>/", views.item_detail, name="item"),
    path("items/<int:request_id>/claim/", views.claim, name="claim"),
    path("items/<int:request_id>/release/", views.release, name="release"),
    path("items/<int:request_id>/skip/", views.skip, name="skip"),
    path("items/<int:request_id>/reassign/", views.reassign, name="reassign"),
    path("items/<int:request_id>/decide/", views.decide, name="decide"),
]
