from django.urls import path

from webapp.studies import views, volunteer

app_name = "studies"
urlpatterns = [
    # researchers (login required)
    path("studies/", views.study_list, name="list"),
    path("studies/new/", views.study_new, name="new"),
    path("studies/<int:pk>/", views.study_detail, name="detail"),
    path("studies/<int:pk>/progress.json", views.progress, name="progress"),
    path("studies/<int:pk>/manage/", views.manage, name="manage"),
    path("studies/<int:pk>/results/", views.results, name="results"),
    path("studies/<int:pk>/results.json", views.results_json, name="results_json"),
    path("studies/<int:pk>/votes.csv", views.export_csv, name="csv"),
    path("studies/<int:pk>/feedback/", views.feedback, name="feedback"),
    path("studies/<int:pk>/participants/<str:ptoken>/exclusion", views.exclusion, name="exclusion"),
    path("studies/<int:pk>/pairs.zip", views.export_pairs, name="pairs"),
    path("studies/<int:pk>/reward-models/", views.reward_model_new, name="reward_model_new"),
    path("studies/reward-models/<int:pk>/guide/", views.guided_new, name="guided_new"),
    path("studies/reward-models/<int:pk>/download/", views.reward_model_download, name="reward_model_download"),
    path("studies/guided/<int:pk>/", views.guided_detail, name="guided"),
    path("studies/guided/<int:pk>/<str:kind>-<int:index>.mp4", views.guided_video, name="guided_video"),
    # volunteers (no account; unguessable tokens)
    path("s/<str:token>/", volunteer.welcome, name="welcome"),
    path("s/<str:token>/pilot/<str:key>/", volunteer.welcome, name="pilot"),
    path("s/<str:token>/p/<str:ptoken>/", volunteer.trial, name="trial"),
    path("s/<str:token>/p/<str:ptoken>/vote", volunteer.vote, name="vote"),
    path("s/<str:token>/p/<str:ptoken>/done", volunteer.done, name="done"),
    path("s/<str:token>/c/<str:clip_token>.mp4", volunteer.clip, name="clip"),
    path("s/<str:token>/f/<str:frame>.png", volunteer.frame, name="frame"),
]
