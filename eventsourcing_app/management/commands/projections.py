import json
import sys
import time

from django.core.management.base import BaseCommand, CommandError

from eventsourcing_app.readside.operations import REBUILD_SOURCES, projection_status, rebuild, retry_dead_letters
from eventsourcing_app.readside.projectors import PROJECTORS


def _age(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s"


class ProgressBar:
    """A one-line progress bar on stderr: events replayed of the store's total, and the rate."""

    def __init__(self, stream, total: int, label: str) -> None:
        self.stream, self.total, self.label = stream, max(total, 1), label
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        share = min(done.events / self.total, 1.0)
        bar = "#" * int(share * 30)
        rate = done.events / max(now - self.started, 1e-6)
        self.stream.write(f"\r{self.label} [{bar:<30}] {done.events}/{self.total} events, {rate:,.0f}/s")
        self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")


class Command(BaseCommand):
    help = ("The projections that feed the parents' API: `status` (position and lag of each), "
            "`rebuild NAME|--all` (a new generation beside the served one, switched to when caught up), "
            "`retry-dead-letters` (apply the streams held behind events that failed).")

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True, metavar="status|rebuild|retry-dead-letters")
        status = sub.add_parser("status", help="generation, events applied, lag in events and seconds, dead letters")
        status.add_argument("--json", action="store_true", help="print JSON instead of a table")
        rebuild_parser = sub.add_parser("rebuild", help="rebuild one projector (or all) without downtime")
        rebuild_parser.add_argument("name", nargs="?", help=f"one of: {', '.join(PROJECTORS)}")
        rebuild_parser.add_argument("--all", action="store_true", help="rebuild every projector, one after another")
        rebuild_parser.add_argument("--source", choices=REBUILD_SOURCES, default="auto",
                                    help="replay the Kafka topics from offset zero, or the event store (mirror); "
                                         "auto: the mirror when a topic has expired records (default)")
        retry = sub.add_parser("retry-dead-letters", help="apply held streams again from the event store")
        retry.add_argument("name", nargs="?", help="only this projector")

    def handle(self, *args, action, **options):
        if action == "status":
            return self._status(options["json"])
        if action == "rebuild":
            return self._rebuild(options["name"], options["all"], options["source"])
        return self._retry(options.get("name"))

    def _status(self, as_json: bool) -> None:
        rows = projection_status()
        if as_json:
            self.stdout.write(json.dumps([r.as_dict() for r in rows], indent=2))
            return
        self.stdout.write(f"{'projector':<14}{'gen':>4}{'position':>10}{'applied':>10}{'lag':>8}{'lag age':>10}"
                          f"{'dead':>6}{'held':>6}  last seen")
        for r in rows:
            building = f" (building {r.building_generation})" if r.building_generation else ""
            seen = f"{r.last_seen:%Y-%m-%d %H:%M:%S} UTC" if r.last_seen else "never"
            self.stdout.write(f"{r.name:<14}{r.active_generation:>4}{r.position:>10}{r.events_applied:>10}{r.lag_events:>8}"
                              f"{_age(r.lag_seconds):>10}{r.dead_letters:>6}{r.held_streams:>6}  {seen}{building}")

    def _rebuild(self, name, all_, source) -> None:
        if bool(name) == bool(all_):
            raise CommandError(f"give one projector name ({', '.join(PROJECTORS)}) or --all")
        if name and name not in PROJECTORS:
            raise CommandError(f"there is no projector {name!r}; the projectors are {', '.join(PROJECTORS)}")
        from eventsourcing_app.eventstore import get_event_store

        store = get_event_store()
        for each in ([name] if name else list(PROJECTORS)):
            total = store.recorder.stream_totals(list(PROJECTORS[each].stream_types))[1]
            bar = ProgressBar(sys.stderr, total, f"rebuild {each}")
            try:
                report = rebuild(each, source=source, progress=bar)
            except (ValueError, TimeoutError) as exc:
                raise CommandError(str(exc)) from None
            finally:
                bar.close()
            self.stdout.write(f"{each}: generation {report.new_generation} built from {report.source} "
                              f"({report.events} events in {report.seconds:.1f}s) and serving; generation "
                              f"{report.old_generation} dropped ({report.rows_deleted} rows)")

    def _retry(self, name) -> None:
        if name and name not in PROJECTORS:
            raise CommandError(f"there is no projector {name!r}; the projectors are {', '.join(PROJECTORS)}")
        results = retry_dead_letters([name] if name else None)
        held = 0
        for each, (released, still) in results.items():
            self.stdout.write(f"{each}: {released} streams released, {still} still held")
            held += still
        if held:
            raise CommandError(f"{held} streams are still held behind dead letters; see their errors in the admin "
                               "(Dead letters) or the log, fix the cause, then retry")
