from django.urls import path

from webapp.experiments import views

app_name = "experiments"
urlpatterns = [
    path("", views.experiment_list, name="list"),
    path("new/", views.experiment_new, name="new"),
    path("new/physmaster/", views.experiment_new_physmaster, name="new_physmaster"),
    path("demo/", views.demo, name="demo"),
    path("compare/", views.compare, name="compare"),
    path("bulk/", views.bulk, name="bulk"),
    path("leaderboard/", views.leaderboard_view, name="leaderboard"),
    path("<int:pk>/", views.experiment_detail, name="detail"),
    path("<int:pk>/metrics.json", views.metrics_json, name="metrics"),
    path("<int:pk>/samples.json", views.samples_json, name="samples"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/continue/", views.continue_run, name="continue"),
    path("<int:pk>/edit/", views.edit, name="edit"),
    path("<int:pk>/archive/", views.archive, name="archive"),
    path("<int:pk>/delete/", views.delete, name="delete"),
    path("<int:pk>/download.zip", views.download, name="download"),
    path("<int:pk>/evaluate/", views.evaluate, name="evaluate"),
    path("<int:pk>/config.toml", views.export_config, name="export"),
    path("<int:pk>/prompts.txt", views.export_prompts, name="prompts"),
    path("<int:pk>/media/<path:path>", views.media, name="media"),
]
