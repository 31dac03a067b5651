from __future__ import annotations

from django.urls import path

from apps.runs import views

app_name = "runs"

urlpatterns = [
    path("", views.run_list, name="list"),
    path("<int:run_id>/", views.run_detail, name="detail"),
    path("start/<slug:slug>/", views.run_create, name="create"),
]
