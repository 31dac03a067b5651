from __future__ import annotations

from django.urls import path

from apps.evaluations import views

app_name = "evaluations"

urlpatterns = [
    path("<slug:slug>/", views.suite_page, name="suite"),
    path("<slug:slug>/settings/", views.suite_settings, name="settings"),
    path("<slug:slug>/cases/new/", views.case_edit, name="case-new"),
    path("<slug:slug>/cases/<int:pk>/", views.case_edit, name="case-edit"),
    path("<slug:slug>/cases/<int:pk>/delete/", views.case_delete, name="case-delete"),
    path("<slug:slug>/cases/import/", views.cases_import, name="cases-import"),
    path("<slug:slug>/cases/from-run/", views.case_from_run, name="case-from-run"),
    path("<slug:slug>/run/", views.suite_run, name="run"),
    path("<slug:slug>/publish/", views.publish, name="publish"),
    path("<slug:slug>/reports/<int:pk>/", views.report_page, name="report"),
    path("<slug:slug>/reports/<int:pk>/override/", views.override, name="override"),
    path("<slug:slug>/compare/", views.compare, name="compare"),
]
