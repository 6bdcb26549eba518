"""The one-command run's database: SQLite, with the portable recorder and the same guards."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.integration.conftest import REPO

SCRIPT = r"""
from django.db import connection
from eventsourcing_app.eventstore import ConcurrencyError, ImmutableEventError, get_event_store
from eventsourcing_app.eventstore.recorders import DjangoRecorder
from eventsourcing_app.operations.verify import verify_integrity
from tests.events import notes

store = get_event_store()
assert type(store.recorder) is DjangoRecorder
batch = notes(3)
store.append_events_sync("child.sqlite-1", batch, expected_version=0)
assert store.append_events_sync("child.sqlite-1", batch, expected_version=0).idempotent
try:
    store.append_events_sync("child.sqlite-1", notes(1), expected_version=0)
    raise SystemExit("no conflict")
except ConcurrencyError as error:
    assert error.actual_version == 3
loaded = store.load_events_sync("child.sqlite-1")
assert [e.version for e in loaded] == [1, 2, 3] and loaded[0].metadata.event_id == batch[0].event_id
assert verify_integrity("child.sqlite-1").ok
for sql in ("UPDATE eventstore_event SET payload = x'7b7d'", "DELETE FROM eventstore_event"):
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
        raise SystemExit("not refused: " + sql)
    except Exception as error:
        assert "stored events are immutable" in str(error), error
from eventsourcing_app.domain import Child
from eventsourcing_app.eventstore import EventSourcingRepositoryImpl, get_event_sourcing_service
service = get_event_sourcing_service()
child = Child(id="sqlite-kid", parent_id="sqlite-parent", name="Ada", age=5)
child.register_child()
child.update_profile({"age": 6})
service.save_aggregate_sync(child)
snapshot = service.create_snapshot_sync(Child, "sqlite-kid")
assert snapshot.version == 2 and snapshot.created_at.tzinfo is not None
repository = EventSourcingRepositoryImpl(Child, cache=False)
loaded = repository.load_sync("sqlite-kid")
assert (loaded.name, loaded.age, repository.last_load.started_from) == ("Ada", 6, "snapshot"), repository.last_load
print("sqlite ok")
"""


def test_sqlite_store_keeps_the_same_invariants(tmp_path):
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'teddy.sqlite3'}", "KAFKA_PUBLISH_ENABLED": "false",
           "TEDDY_DATA_DIR": str(tmp_path)}
    migrate = subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SCRIPT], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "sqlite ok" in done.stdout, done.stdout + done.stderr
