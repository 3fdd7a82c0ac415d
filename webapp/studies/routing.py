from django.urls import path

from webapp.studies.consumers import StudyConsumer

websocket_urlpatterns = [
    path("ws/studies/<int:pk>/", StudyConsumer.as_asgi()),
]
