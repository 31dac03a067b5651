"""Pages of the audit viewer."""

from __future__ import annotations

from django.urls import path

from apps.audit import views

app_name = "audit"
urlpatterns = [
    path("", views.event_list, name="events"),
    path("events/<int:event_id>/", views.event_detail, name="event"),
    path("verify/", views.verify, name="verify"),
    path("verify/<int:verification_id>/", views.verification_detail, name="verification"),
    path("export/", views.export, name="export"),
]
