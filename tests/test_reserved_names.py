"""Names ending like a working folder (ours or LocalAI's) are refused at every entry point.

Such a backend would vanish from the listings and be deleted or renamed by crash
recovery, so the one rule in gallery.validate_name must hold for the API, the dashboard,
the commands, the installer and gallery sync alike.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone

from backends.core import install
from backends.core.gallery import (
    RESERVED_SUFFIXES,
    parse_gallery,
    validate_backend_id,
    validate_name,
)
from backends.core.installed import Metadata
from backends.models import GalleryBackend, Job, Node
from tests.base import PipelineTestCase, make_build

RESERVED = [
    "x.install-tmp",
    "x.install-backup",
    "x.upgrade-tmp",
    "x.backup",
    "x.partial",
]


def test_the_reserved_suffixes_include_the_installers_own() -> None:
    assert install.STAGING_SUFFIX in RESERVED_SUFFIXES
    assert install.BACKUP_SUFFIX in RESERVED_SUFFIXES
    # LocalAI's upgrade staging and backup, and its downloads.
    assert {".upgrade-tmp", ".backup", ".partial"} <= set(RESERVED_SUFFIXES)


@pytest.mark.parametrize("name", [*RESERVED, "X.Install-TMP", "cpu-foo.BACKUP"])
def test_it_refuses_names_ending_in_a_working_suffix(name: str) -> None:
    with pytest.raises(ValueError, match="reserved for the installers' working"):
        validate_name(name)
    with pytest.raises(ValueError, match="reserved"):
        validate_backend_id(f"localai@{name}")


@pytest.mark.parametrize("name", ["backup", "x-backup", "x.backups", "partial-x"])
def test_it_accepts_names_that_only_contain_a_suffix_word(name: str) -> None:
    assert validate_name(name) == name


def test_a_gallery_name_is_not_a_folder_so_it_may_end_so() -> None:
    assert validate_backend_id("old.backup@cpu-foo") == "old.backup@cpu-foo"


def test_the_installer_refuses_them_so_recovery_never_meets_a_user_backend(
    tmp_path: Path,
) -> None:
    backends = tmp_path / "backends"
    installer = install.Installer(backends)
    source = install.Source(str(make_build(tmp_path / "build")))
    installer.install("x", source, Metadata())

    for name in ("x.install-backup", "x.install-tmp"):
        with pytest.raises(ValueError, match="reserved"):
            installer.install(name, source, Metadata())
        with pytest.raises(ValueError, match="reserved"):
            installer.install_meta(name, "x", Metadata())

    assert sorted(path.name for path in backends.iterdir()) == ["x"]
    assert installer.recover() == []
    assert (backends / "x" / "run.sh").exists()


def test_a_gallery_entry_with_such_a_name_is_a_problem() -> None:
    result = parse_gallery(
        "- name: cpu-foo.partial\n  uri: quay.io/a/b:c\n"
        "- name: foo\n  capabilities: {default: cpu-foo.backup}\n"
        "- name: bar\n  alias: bar.install-tmp\n  uri: quay.io/a/b:c\n"
        "- name: cpu-foo\n  uri: quay.io/a/b:c\n",
        "test",
    )
    assert [entry.name for entry in result.entries] == ["cpu-foo"]
    assert len(result.problems) == 3
    assert all("reserved" in problem for problem in result.problems)


class ReservedNamesTestCase(PipelineTestCase):
    def test_gallery_sync_skips_the_entry_and_lists_the_problem(self) -> None:
        self.gallery_file.write_text(
            f"- name: cpu-bar.backup\n  uri: {self.sources / 'cpu-bar'}\n"
            f"- name: cpu-bar\n  uri: {self.sources / 'cpu-bar'}\n"
        )
        summary = self.gallery.sync(force=True)

        self.assertIn("1 entries", summary)
        self.assertEqual(self.gallery.last_error, "")
        self.assertEqual(
            list(GalleryBackend.objects.values_list("name", flat=True)), ["cpu-bar"]
        )
        (problem,) = self.gallery.problems
        self.assertIn("'cpu-bar.backup'", problem)
        self.assertIn("reserved", problem)

    def assert_refused(self, response) -> None:
        self.assertEqual(response.status_code, 400, response.content)
        self.assertIn("reserved", response.json()["error"]["message"])
        self.assertFalse(Job.objects.exists())

    def test_the_api_answers_400(self) -> None:
        self.install_on_disk("x.backup")  # as another tool might have left it
        self.assert_refused(self.apply("x.backup"))
        self.assert_refused(self.apply("localai@cpu-foo.partial"))
        self.assert_refused(self.api_post("/backends/delete/x.backup"))
        self.assert_refused(self.api_post("/backends/upgrade/x.backup"))

    def test_install_external_answers_400_for_the_name_and_the_alias(self) -> None:
        uri = str(self.sources / "cpu-bar")
        for body in (
            {"uri": uri, "name": "mine.install-tmp"},
            {"uri": uri, "name": "mine", "alias": "mine.partial"},
        ):
            self.assert_refused(self.api_post("/api/backends/install-external", body))
        self.assertEqual(list(self.backends.iterdir()), [])

    @override_settings(DISTRIBUTED=True)
    def test_the_node_routes_answer_400(self) -> None:
        node = Node.objects.create(
            name="worker-1", capability="default", last_heartbeat=timezone.now()
        )
        url = f"/api/nodes/{node.pk}/backends"
        uri = str(self.sources / "cpu-bar")
        self.assert_refused(self.api_post(f"{url}/install", {"backend": "x.backup"}))
        self.assert_refused(
            self.api_post(f"{url}/install", {"uri": uri, "name": "x.upgrade-tmp"})
        )
        self.assert_refused(
            self.api_post(
                f"{url}/install", {"uri": uri, "name": "x", "alias": "a.backup"}
            )
        )
        for action in ("upgrade", "delete"):
            self.assert_refused(
                self.api_post(f"{url}/{action}", {"backend": "x.partial"})
            )

    def test_the_dashboard_form_shows_the_error(self) -> None:
        self.client.force_login(self.alice)
        node = Node.objects.local()
        r = self.client.post(
            f"/nodes/{node.pk}/install/",
            {"backend": "cpu-bar.install-backup"},
            headers={"HX-Request": "true"},
        )
        self.assertContains(r, "reserved for the installers")
        self.assertFalse(Job.objects.exists())

    def test_the_install_command_fails_with_the_reason(self) -> None:
        with self.assertRaisesMessage(CommandError, "reserved"):
            call_command(
                "install_backend",
                "mine.backup",
                "--uri",
                str(self.sources / "cpu-bar"),
                stdout=io.StringIO(),
                stderr=io.StringIO(),
            )
        self.assertEqual(list(self.backends.iterdir()), [])
