from __future__ import annotations

import threading

from django.contrib.auth.models import User
from django.db import connection
from django.test import Client, TransactionTestCase

from backends.models import ApiToken, Gallery, Job
from tests.base import queued_tasks


class ConcurrentInstallTestCase(TransactionTestCase):
    def setUp(self) -> None:
        user = User.objects.create_user("alice", is_staff=True, is_superuser=True)
        self.token = ApiToken.objects.create_token(user, "t")[1]
        gallery = Gallery.objects.create(name="localai", url="file:///dev/null")
        gallery.entries.create(name="cpu-bar", uri="quay.io/x/bar:1")
        self.enterContext(queued_tasks())

    def test_twenty_simultaneous_requests_make_one_job(self) -> None:
        ids: list[str] = []
        errors: list[object] = []
        barrier = threading.Barrier(20)

        def request() -> None:
            try:
                barrier.wait()
                r = Client().post(
                    "/backends/apply",
                    {"id": "cpu-bar"},
                    content_type="application/json",
                    headers={"Authorization": f"Bearer {self.token}"},
                )
                if r.status_code == 200:
                    ids.append(r.json()["id"])
                else:
                    errors.append(r.content)
            finally:
                connection.close()

        threads = [threading.Thread(target=request) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(ids), 20)
        self.assertEqual(len(set(ids)), 1)
        self.assertEqual(Job.objects.count(), 1)
