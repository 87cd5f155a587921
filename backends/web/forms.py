"""Forms that validate the dashboard's query strings and POST bodies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django import forms

from backends.core.gallery import validate_backend_id
from backends.models import AuditEvent, GalleryBackend, Job


def _choices(values: Iterable[str], everything: str) -> list[tuple[str, str]]:
    return [("", everything), *((v, v) for v in values)]


class QueryForm(forms.Form):
    """A filter form bound to a query string.

    A shared or hand-edited URL may carry a bad value: that one filter is dropped (and its
    error shown next to it) while the others still apply, rather than failing the page.
    """

    def value(self, name: str, default: Any = None) -> Any:
        if not hasattr(self, "cleaned_data"):
            self.is_valid()
        return self.cleaned_data.get(name) or default


class CatalogueQueryForm(QueryForm):
    """The catalogue's query string: every filter lives in the URL so it can be shared."""

    SORTS = (
        ("name", "Name, A to Z"),
        ("-name", "Name, Z to A"),
        ("gallery", "Gallery order"),
        ("installed", "Installed first"),
    )

    q = forms.CharField(
        required=False,
        max_length=200,
        label="Search",
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Name, description or tag"}
        ),
    )
    gallery = forms.ChoiceField(required=False)
    # A free field, not a choice: an old link with another spelling ("TTS") must still
    # filter rather than fail validation. The page renders its ~100 options itself
    # (the widget's per-option templates cost more than the rest of the page).
    tag = forms.CharField(required=False, max_length=100, label="Modality / tag")
    # The default view is what this node can install and use; these widen it.
    development = forms.BooleanField(required=False, label="Development builds")
    other_hardware = forms.BooleanField(required=False, label="Other hardware")
    sort = forms.ChoiceField(choices=SORTS, required=False)
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, data: Any = None, *, galleries: Iterable[str] = ()) -> None:
        super().__init__(data)
        gallery = self.fields["gallery"]
        assert isinstance(gallery, forms.ChoiceField)
        gallery.choices = _choices(galleries, "All galleries")

    def clean_q(self) -> str:
        return " ".join(self.cleaned_data["q"].split())

    def clean_tag(self) -> str:
        # Gallery tags mix cases ("TTS", "tts"): the filter works on the lower-cased form.
        return str(self.cleaned_data["tag"]).strip().lower()


class JobHistoryForm(QueryForm):
    """Filters of the Jobs page's history."""

    state = forms.ChoiceField(
        required=False, choices=[("", "Any state"), *Job.State.choices]
    )
    kind = forms.ChoiceField(
        required=False, choices=[("", "Any kind"), *Job.Kind.choices]
    )
    backend = forms.CharField(
        required=False,
        max_length=255,
        widget=forms.TextInput(attrs={"type": "search", "placeholder": "Backend name"}),
    )
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def clean_backend(self) -> str:
        return str(self.cleaned_data["backend"]).strip()


class AuditFilterForm(QueryForm):
    """Filters of the Audit page."""

    who = forms.CharField(
        required=False,
        max_length=150,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "User or token"}
        ),
    )
    action = forms.ChoiceField(required=False)
    target = forms.CharField(
        required=False,
        max_length=255,
        widget=forms.TextInput(
            attrs={"type": "search", "placeholder": "Backend, node…"}
        ),
    )
    outcome = forms.ChoiceField(
        required=False, choices=[("", "Any outcome"), *AuditEvent.Outcome.choices]
    )
    since = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    page = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, data: Any = None, *, actions: Iterable[str] = ()) -> None:
        super().__init__(data)
        action = self.fields["action"]
        assert isinstance(action, forms.ChoiceField)
        action.choices = _choices(actions, "Any action")


class KnownFilterForm(QueryForm):
    """The Known backends page's modality filter."""

    modality = forms.ChoiceField(required=False)

    def __init__(self, data: Any = None, *, modalities: Iterable[str] = ()) -> None:
        super().__init__(data)
        modality = self.fields["modality"]
        assert isinstance(modality, forms.ChoiceField)
        modality.choices = _choices(modalities, "All modalities")


class InstallForm(forms.Form):
    """Install a catalogue entry; ``force`` reinstalls one that is already there."""

    force = forms.BooleanField(required=False)


class NodeInstallForm(forms.Form):
    """Install a gallery backend on one node: a name, or ``gallery@name``."""

    backend = forms.CharField(max_length=255, label="Backend")

    def clean_backend(self) -> GalleryBackend:
        value = str(self.cleaned_data["backend"]).strip()
        try:
            validate_backend_id(value)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from None
        entry = GalleryBackend.objects.find(value)
        if entry is None:
            raise forms.ValidationError(
                f"No backend named {value} in the enabled galleries."
            )
        return entry


class NodeSuggestionsForm(forms.Form):
    """What has been typed in a node's install field, to suggest backends for."""

    backend = forms.CharField(max_length=255, required=False, strip=True)


class ExternalInstallForm(forms.Form):
    """Install from a URI: an OCI image, a download, or a folder under the local roots.

    Only the shape is checked here; what the URI may reach, and who may ask, is the
    service's and the role's say, as for the API.
    """

    uri = forms.CharField(
        max_length=2048,
        label="URI",
        widget=forms.TextInput(
            attrs={
                "placeholder": "quay.io/org/image:tag, https://…/backend.tar.gz or a folder",
                "spellcheck": "false",
                "autocomplete": "off",
            }
        ),
    )
    name = forms.CharField(
        max_length=255,
        required=False,
        label="Name",
        help_text="The backend's folder; required for an image or a download.",
    )
    alias = forms.CharField(max_length=255, required=False, label="Alias")
    force = forms.BooleanField(
        required=False, label="Replace it if a backend of that name is installed"
    )

    def clean_uri(self) -> str:
        return str(self.cleaned_data["uri"]).strip()

    def clean_name(self) -> str:
        return str(self.cleaned_data["name"]).strip()

    def clean_alias(self) -> str:
        return str(self.cleaned_data["alias"]).strip()


class KitUploadForm(forms.Form):
    """An offline kit made by ``manage.py export_backends``."""

    kit = forms.FileField(
        label="Kit file",
        help_text="The .tar that manage.py export_backends wrote.",
        allow_empty_file=False,
    )


class KitInstallForm(forms.Form):
    """Which of an uploaded kit's backends to install."""

    names = forms.MultipleChoiceField(
        label="Backends to install", widget=forms.CheckboxSelectMultiple
    )
    force = forms.BooleanField(
        required=False, label="Reinstall the backends already installed"
    )

    def __init__(self, *args: Any, choices: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["names"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(name, name) for name in choices]
