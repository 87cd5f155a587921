from __future__ import annotations

import uuid

from django.db import connection
from django.forms.models import model_to_dict
from django.utils import timezone

from backends.api.backends import JOB_BY_ID
from backends.models import Job, Node
from tests.base import BaseTestCase


class FixedSelectTestCase(BaseTestCase):
    def test_it_gives_the_same_instance_as_the_orm(self) -> None:
        job = Job.objects.create(
            kind=Job.Kind.INSTALL,
            target="llama-cpp",
            node=Node.objects.local(),
            state=Job.State.RUNNING,
            progress=42.5,
            current_bytes=3 << 30,
            cancel_requested=True,
            started_at=timezone.now(),
        )
        pk = Job._meta.pk.get_db_prep_value(job.pk, connection)
        found = JOB_BY_ID.first([pk])
        assert found is not None
        (fixed,) = found
        orm = Job.objects.get(pk=job.pk)
        assert isinstance(fixed, Job)
        self.assertEqual(fixed.pk, orm.pk)
        self.assertEqual(model_to_dict(fixed), model_to_dict(orm))
        for name in ("created_at", "started_at", "finished_at", "updated_at"):
            self.assertEqual(getattr(fixed, name), getattr(orm, name), name)
        self.assertIs(fixed.cancel_requested, True)
        self.assertEqual(fixed.to_opstatus(), orm.to_opstatus())

    def test_it_answers_none_without_a_row(self) -> None:
        pk = Job._meta.pk.get_db_prep_value(uuid.UUID(int=0), connection)
        self.assertIsNone(JOB_BY_ID.first([pk]))
