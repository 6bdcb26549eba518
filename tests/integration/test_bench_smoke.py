"""The benchmark's one command runs every scenario and reports it: `bash bench/run --quick`
(tiny counts, the read side's --smoke) into a scratch directory, on scratch databases of its
own and a Redis database the suite does not use. What a user would check: it succeeds, every
scenario has its row with a number on each side that runs it, the goal column is filled, the
chart is a real PNG, and nothing is left behind in PostgreSQL. No speed is asserted: the
machine is shared, and the numbers of a smoke run mean nothing."""
from __future__ import annotations

import os
import re
import struct
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from django.conf import settings

from tests.integration.conftest import REPO, database_url

# (row name prefix, whether the library runs it too)
SCENARIO_ROWS = [
    ("1. single-event saves", True),
    ("1. ... one save, p99", True),
    ("2. 10-event saves", True),
    ("3. 500-event saves", True),
    ("4. 8 writer processes", True),
    ("5. load a 1,000-event aggregate through the repository, no snapshot", True),
    ("5. load a 1,000-event aggregate from a snapshot", True),
    ("5. raw load of the 1,000 stored events", True),
    ("6. read the whole log in global order", True),
    ("7. relay an outbox backlog", False),
    ("8. projection catch-up from zero", False),
    ("8. lag commit -> read model", False),
    ("8. API reads", False),
    ("9. peak RSS of the worker process", True),
]
NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?( ?(/s|%|ms|µs|MiB))?$")
# The read side's default (13) may be in use by someone's benchmark run; the suite's own is skipped too.
SPARE_REDIS_DBS = (14, 12, 10, 9)


def spare_redis_url() -> str:
    """The suite's Redis server, on a database number the suite does not use."""
    parts = urlsplit(settings.REDIS_URL)
    used = parts.path.strip("/") or "0"
    db = next(n for n in SPARE_REDIS_DBS if str(n) != used)
    return urlunsplit(parts._replace(path=f"/{db}"))


def table_rows(report: str) -> dict[str, list[str]]:
    """The main table's rows: name (without its ↑/↓) -> the other cells."""
    table = report.split("| scenario | ours |", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in table.splitlines()[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows[cells[0].rstrip("↑↓ ")] = cells[1:]
    return rows


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_bench_run_quick_reports_every_scenario(tmp_path):
    server = database_url().rsplit("/", 1)[0]
    db = f"teddy_bench_smoke_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "RESULTS.md"
    redis_url = spare_redis_url()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KAFKA_", "DATABASE_URL"))}
    env["REDIS_URL"] = redis_url
    done = subprocess.run(
        ["bash", "bench/run", "--quick", "--out", str(out), "--pg", server, "--db", db, "--redis", redis_url],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-6000:]

    report = out.read_text()
    rows = table_rows(report)
    for prefix, both_sides in SCENARIO_ROWS:
        found = [name for name in rows if name.startswith(prefix)]
        assert len(found) == 1, f"{prefix!r}: {found or 'no row'}"
        ours, library, _ratio, goal = rows[found[0]]
        assert NUMBER.match(ours), f"{found[0]}: ours {ours!r}"
        if both_sides:
            assert NUMBER.match(library), f"{found[0]}: library {library!r}"
        else:
            assert library == "–", f"{found[0]}: library {library!r}"
    goals = [cells[3] for cells in rows.values() if cells[3]]
    assert len(goals) == 10 and all(re.match(r"^(met|not met) \(", goal) for goal in goals), goals
    assert re.search(r"Goals met in this run: \*\*\d+ of 10\*\*", report)

    chart = tmp_path / "results.png"
    assert "](results.png)" in report
    width, height = png_size(chart)
    assert width >= 600 and height >= 600 and chart.stat().st_size > 20_000

    with psycopg.connect(f"{server}/postgres") as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", [f"{db}%"]).fetchall()
    assert left == [], f"scratch databases left behind: {left}"
