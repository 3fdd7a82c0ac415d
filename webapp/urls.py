from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from webapp import views
from webapp.security import ThrottledLoginView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="experiments:list"), name="home"),
    path("experiments/", include("webapp.experiments.urls")),
    path("", include("webapp.studies.urls")),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("healthz", views.healthz, name="healthz"),
]

# DEBUG off (command A, production): friendly pages, JSON where JSON was asked for (webapp/errors.py)
handler403 = "webapp.errors.permission_denied"
handler404 = "webapp.errors.not_found"
handler500 = "webapp.errors.server_error"
