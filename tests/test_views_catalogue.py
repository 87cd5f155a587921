from __future__ import annotations

from django.db import connection
from django.template.defaultfilters import truncatechars
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from backends.models import Gallery, GalleryBackend, InstalledBackend, Job, Node
from backends.services import catalogue as read
from backends.templatetags.backends_extras import clip, quick_reverse
from tests import cluster
from tests.base import REAL_GALLERY, BaseTestCase

HTMX = {"HX-Request": "true"}


class CatalogueTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.client.force_login(self.bob)

    def test_it_requires_login(self) -> None:
        self.client.logout()
        r = self.client.get("/")
        self.assertRedirects(r, "/accounts/login/?next=/")

    def test_it_lists_every_entry_with_its_gallery(self) -> None:
        r = self.client.get("/?other_hardware=on")
        self.assertTemplateUsed(r, "base.html")
        for name in (
            "llama-cpp",
            "cpu-llama-cpp",
            "cuda12-llama-cpp",
            "whisper",
            "cpu-whisper",
        ):
            self.assertContains(r, f'href="/catalogue/localai/{name}/"')
        self.assertContains(r, "6 of 6 backends")

    def test_it_searches_name_description_and_tags(self) -> None:
        self.assertContains(self.client.get("/?q=whisper"), "2 of 6 backends")
        self.assertContains(self.client.get("/?q=speech"), "1 of 6 backends")
        self.assertContains(self.client.get("/?q=ASR"), "1 of 6 backends")
        r = self.client.get("/?q=nothing-like-this")
        self.assertContains(r, "No backend matches these filters")

    def test_it_requires_every_search_word(self) -> None:
        self.assertContains(
            self.client.get("/?q=llm+cuda12&other_hardware=on"), "1 of 6 backends"
        )

    def test_it_filters_by_tag_ignoring_case(self) -> None:
        r = self.client.get("/?tag=LLM&other_hardware=on")
        self.assertContains(r, "4 of 6 backends")
        self.assertNotContains(r, 'href="/catalogue/localai/whisper/"')

    def test_it_filters_by_gallery(self) -> None:
        other = Gallery.objects.create(name="extra", url=self.gallery.url, position=1)
        other.sync()
        self.assertContains(self.client.get("/?other_hardware=on"), "12 of 12 backends")
        r = self.client.get("/?gallery=extra&other_hardware=on")
        self.assertContains(r, "6 of 12 backends")
        self.assertContains(r, 'href="/catalogue/extra/whisper/"')
        self.assertNotContains(r, 'href="/catalogue/localai/whisper/"')

    def test_it_shows_only_what_runs_on_this_hardware_by_default(self) -> None:
        r = self.client.get("/")
        self.assertContains(r, "4 of 6 backends")
        self.assertNotContains(r, 'href="/catalogue/localai/cuda12-llama-cpp/"')
        self.assertNotContains(r, 'href="/catalogue/localai/metal-llama-cpp/"')

    def test_it_shows_builds_for_other_hardware_when_asked(self) -> None:
        r = self.client.get("/?other_hardware=on")
        self.assertContains(r, "6 of 6 backends")
        self.assertContains(r, 'href="/catalogue/localai/cuda12-llama-cpp/"')

    def test_it_hides_development_builds_unless_asked(self) -> None:
        dev = GalleryBackend.objects.get(name="cpu-whisper")
        dev.pk, dev.name = None, "cpu-whisper-development"
        dev.save()
        self.assertNotContains(self.client.get("/"), "cpu-whisper-development")
        r = self.client.get("/?development=on")
        self.assertContains(r, 'href="/catalogue/localai/cpu-whisper-development/"')

    def test_it_keeps_the_toggles_in_the_form(self) -> None:
        r = self.client.get("/?development=on&other_hardware=on")
        self.assertContains(
            r, '<input type="checkbox" name="development" id="id_development" checked>'
        )
        self.assertContains(r, 'name="other_hardware" id="id_other_hardware" checked')

    def test_it_ranks_the_exact_name_then_prefixes_first(self) -> None:
        body = self.client.get("/?q=whisper&sort=name").content.decode()
        self.assertLess(
            body.index("/catalogue/localai/whisper/"),
            body.index("/catalogue/localai/cpu-whisper/"),
        )

    def test_it_explains_what_a_meta_resolves_to_here(self) -> None:
        r = self.client.get("/?q=llama-cpp&sort=name")
        self.assertContains(r, "uses <strong>cpu-llama-cpp</strong>", html=False)
        self.assertContains(r, "cpu-llama-cpp chosen for")

    def test_it_says_why_a_build_cannot_run_here(self) -> None:
        r = self.client.get("/?q=cuda12&other_hardware=on")
        self.assertContains(r, "Not for this node")
        self.assertContains(r, "needs an NVIDIA GPU")

    def test_it_sorts_by_name_both_ways(self) -> None:
        body = self.client.get("/?sort=-name").content.decode()
        self.assertLess(
            body.index("/catalogue/localai/whisper/"),
            body.index("/catalogue/localai/cpu-whisper/"),
        )
        body = self.client.get("/?sort=name").content.decode()
        self.assertLess(
            body.index("/catalogue/localai/cpu-whisper/"),
            body.index("/catalogue/localai/whisper/"),
        )

    def test_it_sorts_installed_first(self) -> None:
        self.install_on_disk("metal-llama-cpp")
        body = self.client.get("/?sort=installed&other_hardware=on").content.decode()
        self.assertLess(
            body.index("/catalogue/localai/metal-llama-cpp/"),
            body.index("/catalogue/localai/cpu-llama-cpp/"),
        )

    def test_it_marks_installed_entries(self) -> None:
        self.install_on_disk("cpu-whisper", alias="whisper")
        r = self.client.get("/?q=cpu-whisper")
        self.assertContains(r, "Installed</span>")
        r = self.client.get("/?q=cpu-llama")
        self.assertContains(r, "Not installed")

    def test_it_ignores_a_bad_filter_value_and_keeps_the_others(self) -> None:
        r = self.client.get("/?sort=sideways&q=whisper&page=zero")
        self.assertEqual(r.status_code, 200)
        self.assertContains(r, "2 of 6 backends")
        self.assertContains(r, "sort:")

    def test_it_paginates_and_keeps_the_query_in_page_links(self) -> None:
        with self.settings():
            from backends.web import catalogue as views

            original, views.PAGE_SIZE = views.PAGE_SIZE, 2
            try:
                r = self.client.get("/?q=llama&sort=name&other_hardware=on")
            finally:
                views.PAGE_SIZE = original
        self.assertContains(r, "Page 1 of 2")
        self.assertContains(
            r, 'href="?q=llama&amp;sort=name&amp;other_hardware=on&amp;page=2"'
        )

    def test_it_returns_only_the_rows_for_htmx(self) -> None:
        r = self.client.get("/?q=whisper", headers=HTMX)
        self.assertTemplateNotUsed(r, "base.html")
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<section id="catalogue-rows"'))
        self.assertNotIn("<html", body)
        self.assertIn("2 of 6 backends", body)
        self.assertEqual(r["Vary"], "HX-Request, Cookie")

    def test_it_returns_the_full_page_for_a_history_restore(self) -> None:
        r = self.client.get(
            "/?q=whisper", headers={**HTMX, "HX-History-Restore-Request": "true"}
        )
        self.assertContains(r, "<html")

    def test_it_hides_install_buttons_from_non_staff(self) -> None:
        self.assertNotContains(self.client.get("/"), ">Install</button>")

    def test_it_shows_install_and_reinstall_buttons_to_staff(self) -> None:
        self.client.force_login(self.alice)
        self.install_on_disk("cpu-whisper")
        r = self.client.get("/?q=whisper&sort=name")
        self.assertContains(r, 'action="/catalogue/localai/cpu-whisper/install/"')
        self.assertContains(r, ">Reinstall</button>")
        self.assertContains(r, ">Install</button>")
        self.assertContains(r, 'name="csrfmiddlewaretoken"')

    def test_it_shows_live_progress_for_an_entry_being_installed(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="localai@cpu-whisper",
            state=Job.State.RUNNING,
            progress=40,
        )
        r = self.client.get("/?q=cpu-whisper")
        self.assertContains(r, f'hx-get="/jobs/{job.pk}/"')
        self.assertContains(r, '<progress max="100" value="40.0"', html=False)

    def test_every_view_counts_the_entries_it_lists(self) -> None:
        dev = GalleryBackend.objects.get(name="cpu-whisper")
        dev.pk, dev.name = None, "cpu-whisper-development"
        dev.save()
        runnable = read.runs_here_set("default")
        for search in ("", "whisper"):
            for development in (False, True):
                for other_hardware in (False, True):
                    query = read.CatalogueQuery(
                        "default",
                        search,
                        development=development,
                        other_hardware=other_hardware,
                    )
                    with self.subTest(query=query):
                        page = read.catalogue_page(query, runnable, 1, 2)
                        listed = read.catalogue_entries(query)
                        self.assertEqual(page.paginator.count, listed.count())

    def test_a_page_past_the_end_shows_the_last_one(self) -> None:
        runnable = read.runs_here_set("default")
        for search in ("", "llama"):
            query = read.CatalogueQuery("default", search, other_hardware=True)
            with self.subTest(search=search):
                page = read.catalogue_page(query, runnable, 99, 2)
                names = list(
                    read.catalogue_entries(query).values_list("name", flat=True)
                )
                self.assertEqual(page.number, page.paginator.num_pages)
                self.assertEqual([e.name for e in page], names[-len(page) :])

    def test_it_lists_a_name_from_the_first_gallery_first(self) -> None:
        other = Gallery.objects.create(name="extra", url=self.gallery.url, position=1)
        other.sync()
        Gallery.objects.filter(pk=self.gallery.pk).update(position=2)
        page = self.client.get("/").context["page"]
        shown = [(row.entry.name, row.entry.gallery) for row in page]
        by_rule = sorted(shown, key=lambda e: (e[0].lower(), e[1] != "extra"))
        self.assertEqual(shown, by_rule)
        self.assertIn(("whisper", "localai"), shown)

    def test_it_lists_the_tags_as_filter_choices(self) -> None:
        r = self.client.get("/")
        self.assertContains(r, '<option value="llm">llm</option>', html=True)
        self.assertContains(r, '<option value="asr">asr</option>', html=True)


class CatalogueSpeedTestCase(BaseTestCase):
    """The real gallery (1,028 entries) renders fast and without a query per row."""

    def setUp(self) -> None:
        super().setUp()
        self.gallery.url = REAL_GALLERY.as_uri()
        self.gallery.save()
        self.gallery.sync()
        self.client.force_login(self.alice)

    def test_it_renders_the_real_gallery_with_a_fixed_number_of_queries(self) -> None:
        self.assertEqual(GalleryBackend.objects.count(), 1028)
        self.client.get("/")  # first request probes the hardware
        with CaptureQueriesContext(connection) as queries:
            r = self.client.get("/?sort=installed")
        self.assertEqual(r.status_code, 200)
        # A fixed handful (session, user, node, galleries, runs-here set, count, page,
        # the page's builds, jobs): none per row.
        # The time itself is measured by `make bench` (bench/catalogue.py).
        self.assertLess(len(queries), 13)

    def test_it_searches_the_real_gallery(self) -> None:
        r = self.client.get("/?q=llama-cpp&tag=llm")
        self.assertContains(r, 'href="/catalogue/localai/llama-cpp/"')

    def test_it_puts_the_whisper_meta_first_on_page_one(self) -> None:
        body = self.client.get("/?q=whisper").content.decode()
        first = body.index('<a class="name" href="/catalogue/localai/')
        self.assertTrue(
            body.startswith('<a class="name" href="/catalogue/localai/whisper/"', first)
        )


class CatalogueEntryTestCase(BaseTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.client.force_login(self.bob)

    def test_it_shows_a_meta_with_its_builds_and_the_chosen_one(self) -> None:
        r = self.client.get("/catalogue/localai/llama-cpp/")
        self.assertContains(r, "Resolves to <strong>cpu-llama-cpp</strong>", html=False)
        self.assertContains(r, "chosen here")
        self.assertContains(r, "cuda12-llama-cpp")

    def test_it_shows_a_build_with_its_image(self) -> None:
        r = self.client.get("/catalogue/localai/cpu-whisper/")
        self.assertContains(r, "quay.io/go-skynet/local-ai-backends:latest-cpu-whisper")
        self.assertContains(r, "This build runs on this node")

    def test_it_answers_404_for_an_unknown_entry(self) -> None:
        self.assertEqual(self.client.get("/catalogue/localai/nope/").status_code, 404)
        self.assertEqual(self.client.get("/catalogue/other/whisper/").status_code, 404)


class CatalogueInstallTestCase(BaseTestCase):
    url = "/catalogue/localai/cpu-whisper/install/"

    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()

    def test_it_rejects_get(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(self.client.get(self.url).status_code, 405)

    def test_it_sends_anonymous_users_to_log_in(self) -> None:
        r = self.client.post(self.url)
        self.assertRedirects(
            r, f"/accounts/login/?next={self.url}", fetch_redirect_response=False
        )

    def test_it_forbids_non_staff(self) -> None:
        self.client.force_login(self.bob)
        r = self.client.post(self.url)
        self.assertEqual(r.status_code, 403)
        self.assertFalse(Job.objects.exists())

    def test_it_answers_404_for_an_unknown_entry(self) -> None:
        self.client.force_login(self.alice)
        self.assertEqual(
            self.client.post("/catalogue/localai/nope/install/").status_code, 404
        )

    def test_it_starts_a_job_and_redirects_to_it(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url)
        job = Job.objects.get()
        self.assertEqual(
            (job.kind, job.target, job.requested_by),
            ("install", "localai@cpu-whisper", "alice"),
        )
        self.assertRedirects(r, f"/jobs/{job.pk}/", fetch_redirect_response=False)

    def test_it_reinstalls_with_force(self) -> None:
        self.client.force_login(self.alice)
        self.client.post(self.url, {"force": "on"})
        self.assertTrue(Job.objects.get().force)

    def test_it_returns_the_row_with_the_job_for_htmx(self) -> None:
        self.client.force_login(self.alice)
        r = self.client.post(self.url, headers=HTMX)
        self.assertTemplateUsed(r, "backends/partials/_catalogue_row.html")
        body = r.content.decode()
        self.assertTrue(body.lstrip().startswith('<tr id="entry-localai-cpu-whisper"'))
        self.assertIn('id="messages"', body)
        self.assertIn('hx-swap-oob="true"', body)


class NotForThisNodeTestCase(BaseTestCase):
    """A build for other hardware: no plain Install, a confirmation saying what breaks."""

    url = "/catalogue/localai/cuda12-llama-cpp/install-anyway/"

    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        self.client.force_login(self.carol)

    def test_it_offers_install_anyway_instead_of_install(self) -> None:
        r = self.client.get("/?q=cuda12&other_hardware=on")
        self.assertNotContains(r, 'aria-label="Install cuda12-llama-cpp"')
        self.assertContains(r, f'href="{self.url}"')

    def test_the_confirmation_says_what_will_not_work(self) -> None:
        r = self.client.get(self.url)
        self.assertContains(r, "needs an NVIDIA GPU")
        self.assertContains(r, "LocalAI will fail to start this backend")
        self.assertContains(r, 'href="/catalogue/localai/llama-cpp/"')
        self.assertContains(r, '<input type="hidden" name="force" value="on">')

    def test_a_confirmed_install_starts_a_forced_job(self) -> None:
        self.client.post(
            "/catalogue/localai/cuda12-llama-cpp/install/", {"force": "on"}
        )
        job = Job.objects.get()
        self.assertEqual((job.target, job.force), ("localai@cuda12-llama-cpp", True))

    def test_an_unconfirmed_install_starts_nothing_and_asks(self) -> None:
        r = self.client.post("/catalogue/localai/cuda12-llama-cpp/install/")
        self.assertRedirects(r, self.url, fetch_redirect_response=False)
        self.assertFalse(Job.objects.exists())
        self.assertContains(self.client.get(self.url), "does not run on this node")

    def test_it_has_nothing_to_confirm_for_a_build_that_runs_here(self) -> None:
        r = self.client.get("/catalogue/localai/cpu-whisper/install-anyway/")
        self.assertRedirects(r, "/catalogue/localai/cpu-whisper/")

    def test_it_is_for_operators(self) -> None:
        self.client.force_login(self.bob)
        self.assertEqual(self.client.get(self.url).status_code, 403)


# The parts' task ids are chosen on their queues (nothing is pushed: no commit).
@override_settings(DISTRIBUTED=True, HUEY_REDIS_URL=cluster.REDIS_URL)
class CatalogueFanOutTestCase(BaseTestCase):
    """Distributed mode: the dashboard installs the way ``POST /backends/apply`` does."""

    def setUp(self) -> None:
        super().setUp()
        self.gallery.sync()
        now = timezone.now()
        self.gpu, self.cpu = (
            Node.objects.create(name=name, capability=cap, last_heartbeat=now)
            for name, cap in (("gpu-node", "nvidia-cuda-12"), ("cpu-node", "default"))
        )
        self.client.force_login(self.alice)

    def test_a_meta_goes_to_every_online_node(self) -> None:
        r = self.client.post("/catalogue/localai/llama-cpp/install/", headers=HTMX)
        parent = Job.objects.get(parent=None)
        self.assertIsNone(parent.node)
        self.assertEqual(
            sorted(parent.children.values_list("node__name", flat=True)),
            ["cpu-node", "gpu-node"],
        )
        self.assertContains(r, f'id="job-{parent.pk}"')
        self.assertContains(
            r, '<li class="node-part" data-node="gpu-node">', html=False
        )
        self.assertContains(r, "Install of llama-cpp started.")

    def test_a_build_for_one_kind_of_hardware_is_refused(self) -> None:
        r = self.client.post(
            "/catalogue/localai/cuda12-llama-cpp/install/", follow=True
        )
        self.assertContains(
            r,
            "Not started: cuda12-llama-cpp is a hardware-specific build and would not "
            "run on every node; install it on chosen nodes from the Nodes page, or "
            "install llama-cpp, which picks the right build on each node.",
        )
        self.assertFalse(Job.objects.exists())

    def test_it_says_so_when_no_node_is_online(self) -> None:
        Node.objects.filter(is_local=False).update(status=Node.Status.DRAINING)
        r = self.client.post("/catalogue/localai/llama-cpp/install/", follow=True)
        self.assertContains(r, "Not started: no online node to install on")
        self.assertFalse(Job.objects.exists())

    def test_it_shows_the_nodes_a_backend_is_installed_on(self) -> None:
        InstalledBackend.objects.create(node=self.gpu, name="llama-cpp", is_meta=True)
        InstalledBackend.objects.create(node=self.cpu, name="llama-cpp", is_meta=True)
        r = self.client.get("/?q=llama-cpp")
        row = (
            r.content.decode()
            .split('id="entry-localai-llama-cpp"')[1]
            .split("</tr>")[0]
        )
        self.assertIn("On 2 nodes", row)
        self.assertIn("cpu-node, gpu-node", row)


# Names as odd as a gallery may hold: the row links must be exactly what reverse() gives.
ODD_NAMES = ["cpu-whisper", "a.b_c~d", "x+y=z", "grüße", "with space", "100%", "a@b:c"]


def test_row_links_are_the_routes_reverse_gives() -> None:
    for name in ODD_NAMES:
        for route in ("catalogue-entry", "catalogue-install", "catalogue-force"):
            expected = reverse(f"backends:{route}", args=("my-gallery", name))
            assert quick_reverse(f"backends:{route}", "my-gallery", name) == expected
        assert quick_reverse("backends:icon", name) == reverse(
            "backends:icon", args=(name,)
        )


def test_descriptions_are_cut_as_truncatechars_cuts_them() -> None:
    for text in ("short", "x" * 300, "y" * 301, "e\u0301" * 299 + "tail", "é" * 400):
        assert clip(text, 300) == truncatechars(text, 300)
