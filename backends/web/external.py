"""Install from a URI: the dashboard's side of ``POST /backends/install-external``."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from backends import roles
from backends.core.redact import redact_uri
from backends.models import Job
from backends.services import audit, jobs
from backends.web.base import HtmxHttpRequest, requires
from backends.web.forms import ExternalInstallForm


@require_http_methods(["GET", "POST"])
@requires(roles.INSTALL)
def install_from_uri(request: HtmxHttpRequest) -> HttpResponse:
    form = ExternalInstallForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        uri = form.cleaned_data["uri"]
        job = _start(request, form)
        if job is not None:
            return redirect("backends:job-detail", job.pk)
        # The form comes back with the URI minus any credential in it: a page that
        # shows a password keeps it in the browser's history and caches.
        data = request.POST.copy()
        data["uri"] = redact_uri(uri)
        form.data = data
    return render(request, "backends/install_from_uri.html", {"form": form})


def _start(request: HtmxHttpRequest, form: ExternalInstallForm) -> Job | None:
    """Start the job as the API would, or put why not into the form."""
    uri = form.cleaned_data["uri"]
    needed = roles.to_install_from(uri)
    if not audit.permitted(request, needed):
        # A path on this host runs whatever it holds as the host admin: more than an
        # install from a registry, so a role of its own.
        form.add_error("uri", f"Not allowed: {roles.refusal(needed)}.")
        return None
    try:
        job = jobs.install_external(
            uri,
            name=form.cleaned_data["name"],
            alias=form.cleaned_data["alias"],
            force=form.cleaned_data["force"],
            requested_by=request.user.get_username(),
        )
    except jobs.Refused as exc:
        form.add_error(None, f"Not started: {exc}.")
        return None
    messages.success(request, f"Install of {redact_uri(job.target)} started.")
    return job
