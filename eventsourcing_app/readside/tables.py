"""Read-model rows as a projector batch sees them: loaded in one query per table, changed in
memory, written back in one statement per table (an upsert), with personal values opened on
load and sealed again on write."""
from __future__ import annotations

from typing import Iterable

from django.db import models

from .personal import SubjectKeyRing, child_subject


class Table:
    """The rows of one read model and generation that a batch touches, keyed by `key_fields`."""

    def __init__(self, model: type[models.Model], key_fields: tuple[str, ...], generation: int,
                 keyring: SubjectKeyRing | None = None) -> None:
        self.model = model
        self.key_fields = key_fields
        self.generation = generation
        self.keyring = keyring
        self.rows: dict[tuple, dict] = {}
        self.dirty: set[tuple] = set()
        self._indexes: dict[str, dict] = {}  # field -> value -> keys, made by `of` when first asked
        self.fields = [f.attname for f in model._meta.concrete_fields if f.attname != "id"]
        self.has_personal = "personal" in self.fields

    def context(self, key: tuple) -> str:
        return f"{self.model._meta.db_table}:{'/'.join(map(str, key))}"

    def load(self, field: str, values: Iterable) -> None:
        """Loads the rows whose `field` is one of `values` (those not loaded yet)."""
        values = {v for v in values if v is not None}
        if not values:
            return
        query = self.model.objects.filter(generation=self.generation, **{f"{field}__in": values})
        for row in query.values(*self.fields):
            key = tuple(row[f] for f in self.key_fields)
            if key in self.rows:
                continue
            if self.has_personal:
                row["personal"] = self.keyring.open(row["personal"], child_subject(row["child_id"]), self.context(key))
            self._add(key, row)

    def get(self, *key) -> dict | None:
        return self.rows.get(key)

    def of(self, field: str, value) -> list[dict]:
        """The loaded rows whose `field` is `value` (indexed: a batch asks once per event)."""
        index = self._indexes.get(field)
        if index is None:
            index = self._indexes[field] = {}
            for key, row in self.rows.items():
                index.setdefault(row[field], []).append(key)
        return [self.rows[key] for key in index.get(value, ())]

    def _add(self, key: tuple, row: dict) -> None:
        if key not in self.rows:
            for field, index in self._indexes.items():
                index.setdefault(row[field], []).append(key)
        self.rows[key] = row

    def put(self, row: dict) -> dict:
        row["generation"] = self.generation
        key = tuple(row[f] for f in self.key_fields)
        self._add(key, row)
        self.dirty.add(key)
        return row

    def changed(self, row: dict) -> None:
        self.dirty.add(tuple(row[f] for f in self.key_fields))

    def flush(self) -> int:
        if not self.dirty:
            return 0
        objects = []
        for key in self.dirty:
            row = dict(self.rows[key])
            if self.has_personal:
                row["personal"] = self.keyring.seal(row["personal"], child_subject(row["child_id"]), self.context(key))
            objects.append(self.model(**row))
        unique = ["generation", *self.key_fields]
        self.model.objects.bulk_create(objects, update_conflicts=True, unique_fields=unique,
                                       update_fields=[f for f in self.fields if f not in unique])
        written = len(objects)
        self.dirty.clear()
        return written


class InsertOnly:
    """Rows that are written once and never changed (timeline entries, talk time): inserted in
    one statement, a row that is there already (a replayed event) left as it is."""

    def __init__(self, model: type[models.Model], generation: int) -> None:
        self.model = model
        self.generation = generation
        self.pending: list[dict] = []

    def add(self, **row) -> None:
        row["generation"] = self.generation
        self.pending.append(row)

    def flush(self) -> int:
        if not self.pending:
            return 0
        self.model.objects.bulk_create([self.model(**row) for row in self.pending], ignore_conflicts=True)
        written = len(self.pending)
        self.pending = []
        return written
