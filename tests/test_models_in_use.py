"""In-use protection: LocalAI's model configs say which backends a delete would break."""

from __future__ import annotations

import os
from pathlib import Path

from django.test import override_settings

from backends.core import installed, models_usage
from backends.models import Job
from tests.base import PipelineTestCase


def write_model(models: Path, file: str, backend: str, name: str = "") -> None:
    models.mkdir(exist_ok=True)
    name_line = f"name: {name}\n" if name else ""
    (models / file).write_text(
        f"{name_line}backend: {backend}\nparameters:\n  model: x\n"
    )


class ModelConfigsTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.models = self.gallery_file.parent / "models"
        self.models.mkdir()

    def users(self) -> dict[str, list[str]]:
        configs = models_usage.read_configs(self.models)
        return models_usage.users_by_folder(
            configs,
            installed.folders(self.backends),
            installed.scan(self.backends),
        )

    def test_a_model_naming_a_meta_uses_the_meta_and_the_build_it_points_at(
        self,
    ) -> None:
        self.install_on_disk("cpu-bar")
        self.install_on_disk("bar", meta_for="cpu-bar")
        write_model(self.models, "chat.yaml", "bar", name="chat")
        self.assertEqual(self.users(), {"bar": ["chat"], "cpu-bar": ["chat"]})

    def test_a_model_naming_an_alias_uses_the_aliased_build(self) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        write_model(self.models, "stt.yml", "whisper")
        self.assertEqual(self.users(), {"cpu-whisper": ["stt"]})

    def test_a_model_naming_a_concrete_build_uses_only_that_build(self) -> None:
        self.install_on_disk("cpu-bar")
        self.install_on_disk("cpu-foo")
        write_model(self.models, "m.yaml", "cpu-foo", name="m")
        self.assertEqual(self.users(), {"cpu-foo": ["m"]})

    def test_hostile_configs_are_skipped_and_the_rest_still_read(self) -> None:
        self.install_on_disk("cpu-foo")
        write_model(self.models, "good.yaml", "cpu-foo", name="good")
        (self.models / "big.yaml").write_text(
            "backend: cpu-foo\n" + "#" * (models_usage.MAX_CONFIG_BYTES + 1)
        )
        (self.models / "broken.yaml").write_text("backend: [unclosed\n")
        (self.models / "python.yaml").write_text(
            "backend: !!python/object/apply:os.system ['true']\n"
        )
        (self.models / "list.yaml").write_text("- backend: cpu-foo\n")
        os.mkfifo(self.models / "fifo.yaml")
        with self.assertLogs("backends.core.models_usage", "WARNING") as logs:
            self.assertEqual(self.users(), {"cpu-foo": ["good"]})
        text = "\n".join(logs.output)
        for name in ("big.yaml", "broken.yaml", "python.yaml", "fifo.yaml"):
            self.assertIn(name, text)

    def test_a_missing_models_folder_means_no_models(self) -> None:
        self.assertEqual(models_usage.read_configs(self.models / "nope"), [])


class InUseDeleteTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.models = self.gallery_file.parent / "models"
        self.enterContext(override_settings(LOCALAI_MODELS_PATH=self.models))

    def delete(self, name: str, body: dict[str, object] | None = None):
        with self.captureOnCommitCallbacks(execute=True):
            return self.api_post(f"/backends/delete/{name}", body)

    def test_deleting_a_backend_a_model_uses_is_refused_with_the_models(self) -> None:
        self.status(self.apply("foo"))
        write_model(self.models, "chat.yaml", "foo", name="chat")
        write_model(self.models, "other.yaml", "cpu-foo", name="other")
        r = self.delete("foo")
        self.assertEqual(r.status_code, 409)
        body = r.json()
        self.assertEqual(body["code"], "backend_in_use")
        self.assertEqual(body["models"], ["chat", "other"])
        self.assertEqual(body["error"]["code"], 409)
        self.assertIn("chat", body["error"]["message"])
        self.assertTrue((self.backends / "cpu-foo" / "run.sh").exists())
        self.assertFalse(Job.objects.filter(kind=Job.Kind.DELETE).exists())

    def test_force_deletes_a_backend_in_use(self) -> None:
        self.status(self.apply("cpu-bar"))
        write_model(self.models, "m.yaml", "cpu-bar")
        status = self.status(self.delete("cpu-bar", {"force": True}))
        self.assertEqual(status["state"], "completed", status)
        self.assertFalse((self.backends / "cpu-bar").exists())

    def test_a_backend_no_model_uses_is_deleted(self) -> None:
        self.status(self.apply("cpu-bar"))
        write_model(self.models, "m.yaml", "cpu-foo")
        self.assertEqual(self.status(self.delete("cpu-bar"))["state"], "completed")

    def test_without_a_models_folder_setting_nothing_is_checked(self) -> None:
        self.status(self.apply("cpu-bar"))
        write_model(self.models, "m.yaml", "cpu-bar")
        with override_settings(LOCALAI_MODELS_PATH=None):
            self.assertEqual(self.status(self.delete("cpu-bar"))["state"], "completed")

    def test_the_installed_page_shows_the_models_using_each_backend(self) -> None:
        self.status(self.apply("cpu-bar"))
        write_model(self.models, "m.yaml", "cpu-bar", name="my-model")
        self.client.force_login(self.bob)
        page = self.client.get("/installed/")
        self.assertContains(page, "used by model my-model")


class InUseDeleteConfirmationTestCase(PipelineTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.models = self.gallery_file.parent / "models"
        self.enterContext(override_settings(LOCALAI_MODELS_PATH=self.models))
        self.status(self.apply("cpu-bar"))
        write_model(self.models, "m.yaml", "cpu-bar", name="my-model")
        self.client.force_login(self.alice)

    def test_the_delete_confirmation_lists_the_models_and_asks_to_delete_anyway(
        self,
    ) -> None:
        page = self.client.get("/installed/cpu-bar/delete/")
        self.assertContains(page, "<li>my-model</li>", html=True)
        self.assertContains(page, 'name="force"')
        self.assertContains(page, "Delete anyway")

    def test_deleting_without_the_tick_is_refused_and_keeps_the_backend(self) -> None:
        r = self.client.post("/installed/cpu-bar/delete/", follow=True)
        self.assertContains(r, "my-model")
        self.assertEqual(r.redirect_chain[-1][0], "/installed/cpu-bar/delete/")
        self.assertTrue((self.backends / "cpu-bar" / "run.sh").exists())

    def test_deleting_with_the_tick_deletes(self) -> None:
        with self.captureOnCommitCallbacks(execute=True):
            self.client.post("/installed/cpu-bar/delete/", {"force": "on"})
        self.assertFalse((self.backends / "cpu-bar").exists())
