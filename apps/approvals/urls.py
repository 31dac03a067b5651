from __future__ import annotations

from django.urls import path

from apps.approvals import queue_views, reports, views
from apps.approvals.document_views import item_page

app_name = "approvals"

urlpatterns = [
    path("", views.inbox, name="inbox"),
    path("new/", views.inbox_new, name="new-items"),
    path("next/", views.next_item, name="next"),
    path("bulk/", views.bulk, name="bulk"),
    path("views/save/", views.view_save, name="views-save"),
    path("views/<int:view_id>/delete/", views.view_delete, name="views-delete"),
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/read/", views.notifications_read, name="notifications-read"),
    path("badge/", views.badge, name="badge"),
    path("away/", views.away, name="away"),
    path("away/<int:absence_id>/remove/", views.away_remove, name="away-remove"),
    path("queues/", queue_views.queue_list, name="queues"),
    path("queues/<str:key>/", queue_views.queue_settings, name="queue"),
    path("queues/<str:key>/members/", queue_views.queue_members_change, name="queue-members"),
    path("items/<int:request_id>/", views.item_detail, name="item"),
    path("items/<int:request_id>/pages/<int:page>.png", item_page, name="item-page"),
    path("workflows/<slug:slug>/accuracy/", reports.workflow_accuracy, name="workflow-accuracy"),
    path("items/<int:request_id>/claim/", views.claim, name="claim"),
    path("items/<int:request_id>/release/", views.release, name="release"),
    path("items/<int:request_id>/skip/", views.skip, name="skip"),
    path("items/<int:request_id>/reassign/", views.reassign, name="reassign"),
    path("items/<int:request_id>/decide/", views.decide, name="decide"),
]
