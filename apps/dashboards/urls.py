from __future__ import annotations

from django.urls import path

from apps.dashboards import inputs_views, views

app_name = "dashboards"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("digest/", views.digest_toggle, name="digest"),
    path("widgets/<slug:slug>/", views.overview_widget, name="widget"),
    path("widgets/<slug:slug>.csv", views.overview_widget_csv, name="widget-csv"),
    path("processes/<slug:slug>/", views.process, name="process"),
    path("processes/<slug:slug>/widgets/<slug:widget>/", views.process_widget, name="process-widget"),
    path("processes/<slug:slug>/widgets/<slug:widget>.csv", views.process_widget_csv, name="process-widget-csv"),
    path("queues/", views.queue_list, name="queues"),
    path("queues/<str:key>/", views.queue, name="queue"),
    path("queues/<str:key>/widgets/<slug:widget>/", views.queue_widget, name="queue-widget"),
    path("queues/<str:key>/widgets/<slug:widget>.csv", views.queue_widget_csv, name="queue-widget-csv"),
    path("endpoints/", views.endpoint_list, name="endpoints"),
    path("endpoints/<slug:name>/", views.endpoint, name="endpoint"),
    path("endpoints/<slug:name>/widgets/<slug:widget>/", views.endpoint_widget, name="endpoint-widget"),
    path("endpoints/<slug:name>/widgets/<slug:widget>.csv", views.endpoint_widget_csv, name="endpoint-widget-csv"),
    path("inputs/", inputs_views.inputs, name="inputs"),
    path("inputs/rates/", inputs_views.inputs_rates, name="inputs-rates"),
    path("inputs/processes/<slug:slug>/", inputs_views.inputs_workflow, name="inputs-workflow"),
    path("inputs/endpoints/<slug:name>/", inputs_views.inputs_endpoint, name="inputs-endpoint"),
]
