"""Every route of the app, read from the URL conf, with a URL that reaches it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.converters import IntConverter, UUIDConverter

from backends.roles import DELETE, VIEW, VIEW_AUDIT

# Pages a viewer may POST to: they change only what that user sees (their session).
VIEWER_POSTS = {"jobs/<uuid:pk>/dismiss/"}


@dataclass(frozen=True)
class Route:
    name: str
    route: str
    view: Callable[..., Any]
    converters: dict[str, object]

    @property
    def permission(self) -> str | None:
        return getattr(self.view, "permission", None)

    @property
    def contract(self) -> Any:
        return getattr(self.view, "contract", None)

    @property
    def is_api(self) -> bool:
        return self.contract is not None

    @property
    def method(self) -> str:
        """The method that does what the route is for: a page that needs more than
        reading is a POST (installed-delete's GET is its confirmation)."""
        if self.contract is not None:
            return str(self.contract.methods[0])
        if self.route in VIEWER_POSTS:
            return "POST"
        if self.permission in (VIEW, DELETE, VIEW_AUDIT):
            return "GET"
        return "POST"

    def url(self, samples: dict[str, Any]) -> str:
        """The route with a sample value for each parameter: by converter, then by name."""
        path = self.route
        for param, converter in self.converters.items():
            if isinstance(converter, UUIDConverter):
                value = samples["uuid"]
            elif isinstance(converter, IntConverter):
                value = samples.get(f"{self.name}:{param}", samples.get(param))
            else:
                value = samples[param]
            path = path.replace(f"<{_spelling(self.route, param)}>", str(value))
        return "/" + path


def _spelling(route: str, param: str) -> str:
    start = route.index(f":{param}>")
    return route[route.rindex("<", 0, start) + 1 : start] + f":{param}"


def app_routes() -> Iterator[Route]:
    """The routes of ``backends.urls`` (the admin's and the login's are Django's own)."""
    for entry in get_resolver().url_patterns:
        if isinstance(entry, URLResolver) and entry.namespace == "backends":
            for pattern in entry.url_patterns:
                assert isinstance(pattern, URLPattern)
                yield Route(
                    pattern.name or "",
                    str(pattern.pattern),
                    pattern.callback,
                    dict(pattern.pattern.converters),
                )
