"""The admin's gallery form: a source no sync could read is refused on save, with the
field's error; a saved source is synced at once."""

from __future__ import annotations

import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from django.contrib.auth.models import User

from backends.models import Gallery, GalleryBackend
from tests.base import BaseTestCase
from tests.signing import public_pem


class GalleryFormTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.root = User.objects.create_superuser("root", password="password")
        self.client.force_login(self.root)

    def add(self, url: str, mirrors: str = "[]", **extra: Any) -> Any:
        data = {"name": "extra", "url": url, "mirrors": mirrors, "position": 1}
        data |= {"enabled": "on"} | extra
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post("/admin/backends/gallery/add/", data, follow=True)

    def field_errors(self, response: Any, field: str) -> list[str]:
        return list(response.context["adminform"].form.errors.get(field, []))

    def test_it_refuses_an_ftp_source(self) -> None:
        r = self.add("ftp://example.org/index.yaml")
        self.assertIn(
            "use one of https:, http:, file:, github:", self.field_errors(r, "url")[0]
        )
        self.assertFalse(Gallery.objects.filter(name="extra").exists())

    def test_it_refuses_a_bare_path(self) -> None:
        r = self.add(str(self.gallery_file))
        self.assertIn("unsupported source", self.field_errors(r, "url")[0])

    def test_it_refuses_a_file_url_outside_the_local_roots(self) -> None:
        r = self.add("file:///etc/passwd")
        self.assertIn("LOCALAI_ADMIN_LOCAL_ROOTS", self.field_errors(r, "url")[0])

    def test_it_refuses_a_github_shorthand_without_a_path(self) -> None:
        r = self.add("github:mudler/LocalAI")
        self.assertIn("github:owner/repo/path@ref", self.field_errors(r, "url")[0])

    def test_it_refuses_a_bad_mirror_and_names_it(self) -> None:
        r = self.add(
            self.gallery_file.as_uri(), '["https://example.org/a.yaml", "ftp://x/y"]'
        )
        self.assertIn("mirror 2", self.field_errors(r, "mirrors")[0])

    def test_it_refuses_mirrors_that_are_not_a_list_of_sources(self) -> None:
        r = self.add(self.gallery_file.as_uri(), '{"a": 1}')
        self.assertIn("JSON list", self.field_errors(r, "mirrors")[0])

    def test_it_accepts_the_github_shorthand(self) -> None:
        self.add("github:mudler/LocalAI/backend/index.yaml@master", enabled="")
        self.assertTrue(Gallery.objects.filter(name="extra").exists())

    def test_it_syncs_a_new_gallery_on_save(self) -> None:
        other = self.gallery_file.parent / "other.yaml"
        other.write_text("- name: only-here\n  uri: quay.io/x/only-here:1\n")
        r = self.add(other.as_uri())
        self.assertContains(r, "Sync of extra queued")
        gallery = Gallery.objects.get(name="extra")
        self.assertEqual(gallery.entry_count, 1)
        self.assertTrue(GalleryBackend.objects.filter(name="only-here").exists())

    def test_it_syncs_again_when_the_source_changes(self) -> None:
        self.gallery.sync()
        other = self.gallery_file.parent / "other.yaml"
        other.write_text("- name: moved\n  uri: quay.io/x/moved:1\n")
        data = {"name": "localai", "url": other.as_uri(), "mirrors": "[]"}
        data |= {"position": "0", "enabled": "on"}
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post(f"/admin/backends/gallery/{self.gallery.pk}/change/", data)
        self.assertEqual(
            list(self.gallery.entries.values_list("name", flat=True)), ["moved"]
        )


class GalleryVerificationFormTestCase(BaseTestCase):
    """The verification block is parsed on save as a job would parse it."""

    def setUp(self) -> None:
        super().setUp()
        self.root = User.objects.create_superuser("root", password="password")
        self.client.force_login(self.root)

    def change(self, verification: str) -> Any:
        data = {
            "name": self.gallery.name,
            "url": self.gallery.url,
            "mirrors": "[]",
            "position": 0,
            "enabled": "on",
            "verification": verification,
        }
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post(
                f"/admin/backends/gallery/{self.gallery.pk}/change/", data, follow=True
            )

    def errors(self, response: Any) -> list[str]:
        return list(response.context["adminform"].form.errors.get("verification", []))

    def test_a_public_key_policy_is_stored_with_not_before_in_utc(self) -> None:
        pem = public_pem(ec.generate_private_key(ec.SECP256R1()))
        block = {"public_key": pem, "not_before": "2026-05-01T02:00:00+02:00"}
        self.change(json.dumps(block))
        self.gallery.refresh_from_db()
        self.assertEqual(
            self.gallery.verification,
            {"public_key": pem.strip(), "not_before": "2026-05-01T00:00:00Z"},
        )

    def test_a_key_that_is_not_pem_is_refused(self) -> None:
        r = self.change('{"public_key": "not a key"}')
        self.assertIn("public_key is not a PEM public key", self.errors(r)[0])

    def test_a_keyless_policy_needs_an_identity(self) -> None:
        r = self.change('{"issuer": "https://token.actions.githubusercontent.com"}')
        self.assertIn("or identity or identity_regex", self.errors(r)[0])

    def test_a_policy_with_both_a_key_and_an_issuer_is_refused(self) -> None:
        pem = public_pem(ec.generate_private_key(ec.SECP256R1()))
        r = self.change(json.dumps({"public_key": pem, "issuer": "https://x"}))
        self.assertIn("not both", self.errors(r)[0])

    def test_a_bad_identity_regex_is_refused(self) -> None:
        r = self.change('{"issuer": "https://x", "identity_regex": "("}')
        self.assertIn("identity_regex is not a regular expression", self.errors(r)[0])

    def test_a_not_before_without_a_time_zone_is_refused(self) -> None:
        pem = public_pem(ec.generate_private_key(ec.SECP256R1()))
        r = self.change(json.dumps({"public_key": pem, "not_before": "2026-05-01"}))
        self.assertIn("not_before needs a time zone", self.errors(r)[0])

    def test_an_unknown_key_is_refused(self) -> None:
        r = self.change('{"public_keys": "x"}')
        self.assertIn("unknown verification keys: public_keys", self.errors(r)[0])
