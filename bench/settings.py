"""Production settings for benchmark children, with static files in the run's temp dir.

Everything comes from ``localai_admin.settings`` (DEBUG, SECRET_KEY, ALLOWED_HOSTS and
DATABASE_URL from the environment ``bench.common.django_env`` builds). Only STATIC_ROOT
moves, so ``collectstatic`` (needed by the manifest storage when DEBUG is False) never
writes into the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

from localai_admin.settings import *  # noqa: F403
from localai_admin.settings import STATIC_ROOT as _STATIC_ROOT

STATIC_ROOT = (
    Path(os.environ["BENCH_STATIC_ROOT"])
    if os.getenv("BENCH_STATIC_ROOT")
    else _STATIC_ROOT
)
