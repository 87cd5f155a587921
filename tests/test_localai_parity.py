"""What LocalAI's own tests, swagger and web UI expect of the /backends routes, ported.

Each test cites the LocalAI file (commit 82c191a) it comes from. Where we depart from
LocalAI on purpose, docs/localai-compatibility.md says so and names the test that pins
ours. Already pinned elsewhere, and not repeated here:

* an unknown backend is 404 in distributed mode as on a single node
  (tests/test_distributed_api.py test_an_unknown_name_is_404_as_on_a_single_node; LocalAI
  core/http/endpoints/localai/backend.go ApplyBackendEndpoint lets it through);
* an unknown job is 404, not LocalAI's 500 (tests/test_api_jobs.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import SimpleTestCase, override_settings
from django.utils import timezone
from jsonschema import Draft7Validator

from backends.core.sources import ImageTags
from backends.models import InstalledBackend, KnownBackend, Node
from tests.base import PipelineTestCase
from tests.cluster import REDIS_URL
from tests.imagebuild import file, make_layer
from tests.registry_fixtures import RegistryProcess

SWAGGER = json.loads(
    (Path(__file__).parent / "data" / "localai_swagger_backends.json").read_text()
)
DISTRIBUTED = {
    "DISTRIBUTED": True,
    "HUEY_REDIS_URL": REDIS_URL,
    "LOCALAI_ADMIN_REGISTRATION_TOKEN": "s3cret",
}


def swagger_problems(route: str, body: Any) -> list[str]:
    schema = {**SWAGGER["routes"][route], "definitions": SWAGGER["definitions"]}
    return [
        f"{route} {'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in Draft7Validator(schema).iter_errors(body)
    ]


class JobStatusTestCase(PipelineTestCase):
    # core/services/galleryop/backends.go (the success write) and opcache_evict_test.go
    # "evicts a completed op so it no longer shows as processing": clients recognise a
    # success by processed, progress 100 and the message "completed".
    def test_a_successful_job_says_completed_as_localai_clients_expect(self) -> None:
        status = self.status(self.apply("cpu-bar"))
        self.assertEqual(status["message"], "completed")
        self.assertEqual(status["progress"], 100)
        self.assertTrue(status["processed"])
        self.assertEqual(status["outcome"], "installed cpu-bar")

    # core/services/galleryop/backends.go: a completed op is no longer cancellable.
    def test_a_finished_job_offers_no_cancel(self) -> None:
        self.assertFalse(self.status(self.apply("cpu-bar"))["cancellable"])

    # core/services/galleryop/service.go (error write) and history_test.go: a failed op
    # is processed, carries the error, and its message is "error: <the error>".
    def test_a_failed_job_says_error_and_carries_the_error(self) -> None:
        status = self.status(self.apply("broken"))
        self.assertTrue(status["processed"])
        self.assertTrue(status["error"])
        self.assertEqual(status["message"], f"error: {status['error']}")

    # core/services/galleryop/deletion_flag_test.go: a delete job says deletion
    # from the moment it is queued to its end.
    def test_a_delete_job_is_a_deletion_to_its_end(self) -> None:
        self.status(self.apply("cpu-bar"))
        with self.captureOnCommitCallbacks(execute=True):
            r = self.api_post("/backends/delete/cpu-bar")
        status = self.status(r)
        self.assertTrue(status["deletion"])
        self.assertEqual(status["message"], "completed")

    # core/http/endpoints/localai/backend.go ApplyBackendEndpoint: status_url is the
    # job's status route on the server the client called.
    def test_apply_answers_the_job_id_and_its_status_url(self) -> None:
        body = self.apply("cpu-bar").json()
        self.assertEqual(
            body["status_url"], f"http://testserver/backends/jobs/{body['id']}"
        )


class SwaggerTestCase(PipelineTestCase):
    """swagger/swagger.json: every /backends route answers what LocalAI documents."""

    def setUp(self) -> None:
        super().setUp()
        self.status(self.apply("foo"))  # a meta and its build on disk
        row = InstalledBackend.objects.get(name="cpu-foo")
        row.upgrade_available, row.available_version = True, "v2"
        row.save()

    def check(self, route: str, body: Any) -> None:
        self.assertEqual(swagger_problems(route, body), [])

    def test_every_backends_route_answers_as_localai_swagger_describes(self) -> None:
        job_id = self.apply("cpu-bar").json()["id"]
        answers = {
            "GET /backends": self.api_get("/backends"),
            "GET /backends/available": self.api_get("/backends/available"),
            "GET /backends/known": self.api_get("/backends/known"),
            "GET /backends/galleries": self.api_get("/backends/galleries"),
            "GET /backends/jobs": self.api_get("/backends/jobs"),
            "GET /backends/jobs/{uuid}": self.api_get(f"/backends/jobs/{job_id}"),
            "GET /backends/upgrades": self.api_get("/backends/upgrades"),
            "POST /backends/upgrades/check": self.api_post("/backends/upgrades/check"),
            "POST /backends/apply": self.apply("cpu-foo", force=True),
            "POST /backends/upgrade/{name}": self.api_post("/backends/upgrade/cpu-foo"),
            "POST /backends/delete/{name}": self.api_post("/backends/delete/cpu-bar"),
        }
        self.assertEqual(set(answers), set(SWAGGER["routes"]))
        for route, response in answers.items():
            with self.subTest(route):
                self.assertEqual(response.status_code, 200, response.content)
                self.check(route, response.json())
        self.assertIn("cpu-foo", answers["GET /backends/upgrades"].json())

    @override_settings(**DISTRIBUTED)
    def test_distributed_answers_match_the_swagger_too(self) -> None:
        now = timezone.now()
        node = Node.objects.create(name="gpu", capability="nvidia", last_heartbeat=now)
        InstalledBackend.objects.create(node=node, name="cuda12-foo", version="v1")
        self.check("GET /backends", self.api_get("/backends").json())
        self.check(
            "GET /backends/available", self.api_get("/backends/available").json()
        )
        r = self.api_post("/backends/apply", {"id": "foo"})
        self.check("GET /backends/jobs/{uuid}", self.status(r))

    # core/gallery/backend_types.go: capabilities is omitted when empty; the swagger
    # types it as an object, so null is not a value a client expects.
    def test_a_build_carries_no_capabilities_key(self) -> None:
        rows = {r["name"]: r for r in self.api_get("/backends/available").json()}
        self.assertNotIn("capabilities", rows["cpu-bar"])
        self.assertEqual(rows["foo"]["capabilities"]["default"], "cpu-foo")


class LocalAIClientsTestCase(PipelineTestCase):
    # core/http/auth/middleware.go (and the reference, ops-api section 3): LocalAI's
    # clients may send the key as x-api-key.
    def test_an_api_token_in_x_api_key_is_accepted(self) -> None:
        r = self.client.get("/backends", headers={"x-api-key": self.token_value})
        self.assertEqual(r.status_code, 200)

    # Same source: ElevenLabs-style clients send xi-api-key.
    def test_an_api_token_in_xi_api_key_is_accepted(self) -> None:
        r = self.client.get("/backends", headers={"xi-api-key": self.token_value})
        self.assertEqual(r.status_code, 200)

    def test_a_wrong_x_api_key_is_refused(self) -> None:
        r = self.client.get("/backends", headers={"x-api-key": "lai_wrong"})
        self.assertEqual(r.status_code, 401)
        self.assertEqual(r.json()["error"]["type"], "unauthorized")

    # core/http/react-ui/src/utils/config.js: the UI and scripts build URLs that may end
    # in a slash; LocalAI's router answers /backends/ as /backends.
    def test_backends_with_a_trailing_slash_answers_as_without(self) -> None:
        self.install_on_disk("cpu-bar")
        self.assertEqual(
            self.api_get("/backends/").json(), self.api_get("/backends").json()
        )


class ImageTagsTestCase(SimpleTestCase):
    # core/gallery/backends_devuri_test.go "rewrites a released image to its branch
    # (development) image".
    def test_a_released_image_has_a_development_image(self) -> None:
        self.assertEqual(
            ImageTags().development("quay.io/org/backends:latest-metal-x"),
            "quay.io/org/backends:master-metal-x",
        )

    # backends_devuri_test.go "leaves an image already on the branch tag untouched" and
    # "returns ok=false when there is no released tag to swap".
    def test_an_image_without_a_released_tag_has_no_development_image(self) -> None:
        self.assertEqual(ImageTags().development("quay.io/org/b:master-x"), "")
        self.assertEqual(ImageTags().development("oci://localhost/custom:edge"), "")

    # core/gallery/backends.go InstallBackend: mirrors first, then latest-X -> master-X
    # -> master-X-development.
    def test_a_missing_released_image_falls_back_to_the_development_builds(
        self,
    ) -> None:
        primary, fallbacks = ImageTags().candidates("q.io/b:latest-x", ["m.io/b:x"])
        self.assertEqual(primary, "q.io/b:latest-x")
        self.assertEqual(
            fallbacks, ("m.io/b:x", "q.io/b:master-x", "q.io/b:master-x-development")
        )

    # core/gallery/backends.go (PreferDevelopmentBackends) and backends_devuri_test.go:
    # the development image first, the released image as the first fallback.
    def test_preferring_development_tries_the_development_image_first(self) -> None:
        primary, fallbacks = ImageTags().candidates(
            "q.io/b:latest-x", ["m.io/b:x"], prefer_development=True
        )
        self.assertEqual(primary, "q.io/b:master-x")
        self.assertEqual(fallbacks[:2], ("q.io/b:latest-x", "m.io/b:x"))

    # Ours only (docs/localai-compatibility.md): LocalAI also rewrites a tarball URL,
    # whose checksum would then refuse the other build anyway.
    def test_a_tarball_url_gets_no_tag_fallbacks(self) -> None:
        url = "https://example.org/latest-x.tar.gz"
        self.assertEqual(ImageTags().candidates(url, []), (url, ()))

    # The tags are LocalAI's defaults and its settings change them (core/cli/run.go).
    def test_the_release_and_branch_tags_are_settings(self) -> None:
        tags = ImageTags(release="v3", branch="edge", dev_suffix="dev")
        self.assertEqual(
            tags.candidates("q.io/b:v3-x", []),
            ("q.io/b:v3-x", ("q.io/b:edge-x", "q.io/b:edge-x-dev")),
        )


@pytest.mark.registry
class ImageFallbackInstallTestCase(PipelineTestCase):
    """The fallbacks against a real registry: only some tags of an image exist."""

    @pytest.fixture(autouse=True)
    def _registry(self, registry: RegistryProcess) -> None:
        self.registry = registry

    def push(self, repository: str, tag: str) -> None:
        run = file("run.sh", f"#!/bin/sh\necho {tag}\n", 0o755)
        self.registry.push_image(repository, tag, [make_layer([run])])

    def install(self, uri: str) -> dict[str, Any]:
        self.gallery_file.write_text(f"- name: cpu-x\n  uri: {uri}\n")
        self.gallery.sync(force=True)
        return self.status(self.apply("cpu-x"))

    def installed_tag(self) -> str:
        return (self.backends / "cpu-x" / "run.sh").read_text().split()[-1]

    # core/gallery/backends.go InstallBackend, the latest- -> master- fallback.
    def test_a_missing_released_image_installs_its_development_image(self) -> None:
        self.push("fallback/one", "master-cpu-x")
        status = self.install(self.registry.ref("fallback/one", "latest-cpu-x"))
        self.assertEqual(status["state"], "completed", status)
        self.assertEqual(self.installed_tag(), "master-cpu-x")

    # Same place, the last step: master-X-development.
    def test_then_the_development_suffixed_image(self) -> None:
        self.push("fallback/two", "master-cpu-x-development")
        status = self.install(self.registry.ref("fallback/two", "latest-cpu-x"))
        self.assertEqual(status["state"], "completed", status)
        self.assertEqual(self.installed_tag(), "master-cpu-x-development")

    # core/gallery/backends.go PreferDevelopmentBackends: metadata.json records the
    # development image as the uri.
    def test_preferring_development_installs_the_development_image(self) -> None:
        self.push("fallback/three", "latest-cpu-x")
        self.push("fallback/three", "master-cpu-x")
        with self.settings(LOCALAI_PREFER_DEV_BACKENDS=True):
            status = self.install(self.registry.ref("fallback/three", "latest-cpu-x"))
        self.assertEqual(status["state"], "completed", status)
        self.assertEqual(self.installed_tag(), "master-cpu-x")
        metadata = json.loads((self.backends / "cpu-x" / "metadata.json").read_text())
        self.assertEqual(
            metadata["uri"], self.registry.ref("fallback/three", "master-cpu-x")
        )


@override_settings(**DISTRIBUTED)
class ClusterCatalogueTestCase(PipelineTestCase):
    # core/http/endpoints/localai/backend_available_cluster_test.go "falls back to the
    # local listing": before any agent registers, the controller's own hardware lists.
    def test_before_any_agent_registers_the_catalogue_is_not_empty(self) -> None:
        names = [r["name"] for r in self.api_get("/backends/available").json()]
        self.assertIn("cpu-bar", names)
        self.assertIn("foo", names)

    # backend_available_cluster_test.go "lists GPU-only backends a worker node can run",
    # and core/gallery/gallery.go AvailableBackendsForCapabilities: the controller's
    # capability counts beside the agents'.
    def test_the_controllers_hardware_counts_beside_the_agents(self) -> None:
        Node.objects.create(
            name="gpu", capability="nvidia-cuda-12", last_heartbeat=timezone.now()
        )
        names = [r["name"] for r in self.api_get("/backends/available").json()]
        self.assertIn("cuda12-foo", names)
        self.assertIn("cpu-bar", names)

    def test_an_entry_several_capabilities_run_is_listed_once(self) -> None:
        Node.objects.create(
            name="gpu", capability="nvidia-cuda-12", last_heartbeat=timezone.now()
        )
        names = [r["name"] for r in self.api_get("/backends/available").json()]
        self.assertEqual(names.count("cpu-bar"), 1)
        self.assertEqual(len(names), len(set(names)))


class KnownBackendsTestCase(PipelineTestCase):
    # core/http/endpoints/localai/backend_test.go "includes curated pref-only backends
    # with AutoDetect=false" (the names LocalAI added since our registry was written).
    def test_it_knows_localais_current_preference_only_backends(self) -> None:
        rows = {r["name"]: r for r in self.api_get("/backends/known").json()}
        for name, modality in [
            ("mlx-audio", "tts"),
            ("magpie-tts-cpp", "tts"),
            ("supertonic", "tts"),
            ("omnivoice-cpp", "tts"),
            ("audio-cpp", "tts"),
            ("nemo-speech-cpp", "asr"),
        ]:
            with self.subTest(name):
                self.assertEqual(rows[name]["modality"], modality)
                self.assertFalse(rows[name]["auto_detect"])

    # backend_test.go "advertises nemo-speech-cpp ... naming its other families": the one
    # modality field cannot say it, so the description does.
    def test_a_multi_modality_backend_names_the_others_in_its_description(
        self,
    ) -> None:
        rows = {r["name"]: r for r in self.api_get("/backends/known").json()}
        for word in ("diarization", "synthesis", "translation"):
            self.assertIn(word, rows["nemo-speech-cpp"]["description"])
        self.assertIn("ASR", rows["audio-cpp"]["description"])

    def test_refresh_known_backends_replaces_the_registry_from_a_file(self) -> None:
        registry = self.gallery_file.parent / "known.json"
        registry.write_text(
            json.dumps(
                [
                    {"name": "new-tts", "modality": "tts", "source": "preference-only"},
                    {"name": "whisper", "modality": "asr", "source": "drop-in"},
                    {
                        "name": "whisper",
                        "modality": "asr",
                        "auto_detect": True,
                        "source": "importer",
                    },
                ]
            )
        )
        call_command("refresh_known_backends", "--from", registry.as_uri())
        rows = {k.name: k for k in KnownBackend.objects.all()}
        self.assertEqual(set(rows), {"new-tts", "whisper"})
        self.assertEqual(rows["whisper"].source, "importer")
        self.assertTrue(rows["whisper"].auto_detect)

    def test_refresh_known_backends_refuses_a_bad_file_and_keeps_the_registry(
        self,
    ) -> None:
        registry = self.gallery_file.parent / "known.json"
        registry.write_text(json.dumps([{"name": "../x", "source": "importer"}]))
        before = KnownBackend.objects.count()
        with self.assertRaisesMessage(Exception, "entry 0"):
            call_command("refresh_known_backends", "--from", str(registry))
        self.assertEqual(KnownBackend.objects.count(), before)

    def test_refresh_known_backends_defaults_to_the_bundled_registry(self) -> None:
        KnownBackend.objects.all().delete()
        call_command("refresh_known_backends")
        self.assertTrue(KnownBackend.objects.filter(name="nemo-speech-cpp").exists())
