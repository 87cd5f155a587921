"""An offline kit uploaded from the dashboard: the kit's backends and this host's
verdict on their signatures first, then the install, followed on the job's page."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.core.management import call_command
from playwright.sync_api import expect

from backends.models import Gallery, Job
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess
from tests.signing import new_key, payload_for, public_pem, push_signature, sign

pytestmark = [
    pytest.mark.browser,
    pytest.mark.registry,
    pytest.mark.django_db(transaction=True),
]


def test_an_uploaded_kit_is_shown_verified_then_installed(
    new_page: Any,
    users: Any,
    registry: RegistryProcess,
    whisper_gallery: Any,
    job_worker: Any,
    tmp_path: Path,
) -> None:
    key = new_key()
    layer = make_layer([file("run.sh", "#!/bin/sh\necho kit\n", 0o755)])
    image = registry.push_image("browser/kit-whisper", "cpu", [layer])
    payload = payload_for(image.digest)
    push_signature(registry, image, payload, sign(key, payload))
    gallery: Gallery = whisper_gallery(registry.ref("browser/kit-whisper", "cpu"))
    gallery.verification = {"public_key": public_pem(key)}
    gallery.save()
    kit = tmp_path / "whisper-kit.tar"
    call_command("export_backends", "whisper", output=str(kit))

    page = new_page(users["alice"])
    page.goto("/installed/")
    page.get_by_role("link", name="Upload an offline kit").click()
    page.get_by_label("Kit file").set_input_files(str(kit))
    page.get_by_role("button", name="Upload and check").click()

    expect(page).to_have_url(re.compile(r"/installed/kits/[0-9a-f]{16}/$"))
    images = page.locator("table.kit-images")
    expect(images).to_contain_text("cpu-whisper")
    expect(images.locator(".badge")).to_have_text("verified")
    expect(images).to_contain_text("gallery localai: key SHA256:")
    # What the kit was made for is ticked; its build alone is not.
    expect(page.get_by_label("whisper", exact=True)).to_be_checked()
    expect(page.get_by_label("cpu-whisper", exact=True)).not_to_be_checked()
    page.get_by_role("button", name="Install").click()

    expect(page).to_have_url(re.compile(r"/jobs/[0-9a-f-]{36}/$"))
    expect(page.locator(".job-progress")).to_contain_text("Install: completed")
    expect(page.locator(".job-progress")).to_contain_text(
        "installed whisper as cpu-whisper"
    )
    job = Job.objects.get()
    assert job.target.endswith("@whisper"), job.target
    backends = Path(settings.LOCALAI_BACKENDS_PATH)
    assert (backends / "cpu-whisper" / "run.sh").read_text().endswith("echo kit\n")
    page.goto("/installed/")
    expect(page.locator("#installed-rows")).to_contain_text("gallery localai: key")
