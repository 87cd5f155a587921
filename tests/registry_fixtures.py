"""Session fixtures that start a real OCI registry (filled in by the OCI work)."""

from __future__ import annotations
