from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from backends.api import metrics

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Prometheus' conventional path, outside the app's routes: it takes a metrics token
    # or an allowed address besides the API's tokens (backends/api/metrics.py).
    path("metrics", metrics.scrape, name="metrics"),
    path("", include("backends.urls")),
]

# JSON envelopes under /api and /backends, Django's pages elsewhere.
handler400 = "backends.api.http.bad_request"
handler403 = "backends.api.http.permission_denied"
handler404 = "backends.api.http.not_found"
handler500 = "backends.api.http.server_error"
