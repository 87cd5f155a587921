"""Fixed SELECTs for the two reads every polling script repeats: the API token check and
the job status.

For a one-row lookup by key, the ORM spends about ten times longer building and compiling
the query than the database spends answering it (docs/performance.md, "Status polling").
A ``FixedSelect`` writes its SQL and prepares Django's value converters once per kind of
database, then costs one ``execute`` and one ``Model.from_db`` per model. Instances come
out as the ORM would give them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db import connections, models
from django.db.models.sql import Query


def column(field: models.Field[Any, Any]) -> str:
    """A concrete field's column (the stubs allow None, which only relations have)."""
    if field.column is None:
        raise TypeError(f"{field} has no column")
    return field.column


class FixedSelect:
    """``SELECT <every column of each model> <rest>``, giving model instances.

    ``sources`` pairs each model with the table alias ``rest`` uses for it; ``rest`` is
    the SQL after the column list (``FROM ... WHERE ...``) with ``%s`` placeholders.
    Parameters go in as the database expects them (``field.get_db_prep_value``).
    """

    def __init__(
        self,
        sources: Sequence[tuple[type[models.Model], str]],
        rest: str,
        using: str = "default",
    ) -> None:
        self._sources = [
            (model, alias, list(model._meta.concrete_fields))
            for model, alias in sources
        ]
        self._rest = rest
        self.using = using
        # Per database vendor (tests run the same code on SQLite and PostgreSQL).
        self._prepared: dict[str, tuple[str, Any, dict[int, Any]]] = {}

    def _prepare(self) -> tuple[str, Any, dict[int, Any]]:
        connection = connections[self.using]
        prepared = self._prepared.get(connection.vendor)
        if prepared is None:
            quote = connection.ops.quote_name
            columns = [
                (alias, field) for _, alias, fields in self._sources for field in fields
            ]
            sql = "SELECT {} {}".format(
                ", ".join(f"{quote(a)}.{quote(column(f))}" for a, f in columns),
                self._rest,
            )
            compiler = connection.ops.compiler("SQLCompiler")(
                Query(self._sources[0][0]), connection, self.using
            )
            converters = compiler.get_converters([f.get_col(a) for a, f in columns])
            prepared = self._prepared[connection.vendor] = (sql, compiler, converters)
        return prepared

    def first(self, params: Sequence[Any]) -> tuple[models.Model, ...] | None:
        """One instance per model from the first row, or None when there is no row."""
        sql, compiler, converters = self._prepare()
        with connections[self.using].cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        if row is None:
            return None
        if converters:
            row = next(compiler.apply_converters([row], converters))
        instances = []
        start = 0
        for model, _, fields in self._sources:
            end = start + len(fields)
            names = [field.attname for field in fields]
            instances.append(model.from_db(self.using, names, row[start:end]))
            start = end
        return tuple(instances)
