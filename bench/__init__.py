"""Benchmarks for SPEC section 10 (issue 6): ``make bench`` / ``python -m bench [figure ...]``.

One module per figure group:

* ``bench.sync``      gallery sync of the real index vs a bare libyaml parse (SQLite, PostgreSQL)
* ``bench.catalogue`` server time of the catalogue page with that gallery loaded
* ``bench.polling``   job status polling under gunicorn vs a trivial JSON view (wrk)
* ``bench.install``   OCI install from a local ``docker-registry`` vs ``curl | tar -xz``

The parent process (``bench.__main__``) never imports Django: every measurement that
needs the product runs in a child process with its own environment (temporary data dir,
its own database), so SQLite and PostgreSQL runs never share a process.
See docs/performance.md for what is measured and why.
"""

from __future__ import annotations
