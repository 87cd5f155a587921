"""``bench.settings`` plus the benchmark-only trivial view (``bench.polling_urls``)."""

from __future__ import annotations

from bench.settings import *  # noqa: F403

ROOT_URLCONF = "bench.polling_urls"
