"""Running a command: load aggregates, decide, save them all in one transaction, retry on conflict.

A command handler gives `run_command` a function that loads what it needs through the
`UnitOfWork`, calls the aggregates' methods and registers the aggregates to save. The saves
happen together in one database transaction (publication to Kafka follows its commit); if
another writer moved one of the streams meanwhile, everything is rolled back and the function
runs again on fresh state (after a short random pause), a few times, before `Conflict` is raised. Domain errors pass
through unchanged, with nothing saved.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from django.db import OperationalError, transaction

from ..domain import Child, Conversation, Parent
from ..domain.aggregate import EventSourcedAggregate
from ..eventstore import (
    AggregateNotFoundError,
    ConcurrencyError,
    StoreUnavailableError,
    StreamClosedError,
    SubjectErasedError,
    TransientStoreError,
    get_event_sourcing_service,
)
from .actors import Actor
from .errors import Conflict, Gone, NotFound, PermissionDenied, Unavailable

logger = logging.getLogger(__name__)
A = TypeVar("A", bound=EventSourcedAggregate)
ATTEMPTS = 8
_BACKOFF_SECONDS = 0.002
_TRANSIENT_SQLSTATES = {"40P01", "40001"}  # deadlock detected (the database broke it), serialization failure


@dataclass(frozen=True)
class CommandResult:
    """What a command saved: the stream it was about and each saved stream's new version."""

    stream_id: str
    version: int
    streams: dict[str, int] = field(default_factory=dict)


class UnitOfWork:
    def __init__(self, actor: Actor) -> None:
        self.actor = actor
        self.service = get_event_sourcing_service()
        self._to_save: list[EventSourcedAggregate] = []
        self.read_versions: dict[str, int] = {}  # every stream the decision read, at the version read

    def load(self, cls: type[A], aggregate_id: str) -> A:
        aggregate = self.load_or_none(cls, aggregate_id)
        if aggregate is None:
            raise NotFound(f"{cls.aggregate_type} {aggregate_id} does not exist")
        return aggregate

    def load_or_none(self, cls: type[A], aggregate_id: str) -> A | None:
        try:
            aggregate = self.service.load_aggregate_sync(cls, aggregate_id)
        except AggregateNotFoundError:
            self.read_versions.setdefault(f"{cls.aggregate_type}.{aggregate_id}", 0)
            return None
        self.read_versions.setdefault(aggregate.stream_id, aggregate.version)
        return aggregate

    def save(self, *aggregates: EventSourcedAggregate) -> None:
        """Saves these aggregates when the command's function returns (nothing if unchanged)."""
        for aggregate in aggregates:
            if aggregate not in self._to_save:
                self._to_save.append(aggregate)

    # --- the rules every family command shares -------------------------------------------

    def require_family_actor(self) -> None:
        if not (self.actor.is_parent or self.actor.acts_for_any_family):
            raise PermissionDenied(f"{self.actor.id} acts neither as a parent (give its parent id) nor as staff or a "
                                   "system job")

    def require_own_parent(self, parent_id: str) -> None:
        self.require_family_actor()
        if self.actor.is_parent and self.actor.parent_id != parent_id:
            raise PermissionDenied(f"{self.actor.id} acts for parent {self.actor.parent_id}, not for parent {parent_id}")

    def load_own_parent(self, parent_id: str) -> Parent:
        self.require_own_parent(parent_id)
        return self.load(Parent, parent_id)

    def load_own_child(self, child_id: str) -> Child:
        """The child, if the actor may act on it (a parent only on their own children)."""
        self.require_family_actor()
        child = self.load(Child, child_id)
        if self.actor.is_parent and child.parent_id != self.actor.parent_id:
            # Not "forbidden": another family's child must not even be confirmed to exist.
            raise NotFound(f"child {child_id} does not exist")
        return child

    def load_own_conversation(self, conversation_id: str) -> tuple[Conversation, Child]:
        conversation = self.load(Conversation, conversation_id)
        if conversation.child_id is None:
            raise NotFound(f"conversation {conversation_id} does not exist")
        try:
            child = self.load_own_child(conversation.child_id)
        except NotFound:
            raise NotFound(f"conversation {conversation_id} does not exist") from None
        return conversation, child

    def parent_of(self, child: Child) -> Parent | None:
        return self.load_or_none(Parent, child.parent_id) if child.parent_id else None


def run_command(actor: Actor, decide: Callable[[UnitOfWork], str]) -> CommandResult:
    """Runs `decide(uow)` (which returns the stream id the command is about) and saves what it
    registered, in one transaction; again on a concurrency conflict."""
    if not isinstance(actor, Actor):
        raise TypeError(f"actor must be an Actor (Actor.user(...) or Actor.system(...)), not {actor!r}")
    for attempt in range(1, ATTEMPTS + 1):
        uow = UnitOfWork(actor)
        try:
            # A connection lost before this command (a failed query of the caller's) would fail
            # the transaction's start on every attempt: replaced first, as the store's calls do.
            uow.service.event_store.recorder.connection()
            with transaction.atomic():
                stream_id = decide(uow)
                to_save = sorted(uow._to_save, key=lambda a: a.stream_id)
                written = {aggregate.stream_id for aggregate in to_save}
                # What was read, first (shared locks, in stream id order), then the saves: every
                # command takes stream locks in that order, and an erasure takes a subject's lock
                # only after its stream's, so commands, erasures and position recording never
                # wait for each other in a circle.
                _check_what_was_read(uow, written, existing=True)
                saved = {}
                for aggregate in to_save:
                    if aggregate.has_uncommitted_events():
                        uow.service.save_aggregate_sync(aggregate, actor=actor.id)
                    saved[aggregate.stream_id] = aggregate.version
                # Streams that did not exist when read have no row to lock: checked after the
                # saves (which may have waited for the writer that created one).
                _check_what_was_read(uow, written, existing=False)
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) not in _TRANSIENT_SQLSTATES or attempt == ATTEMPTS:
                raise Unavailable(f"the database failed the command: {exc}; try again") from exc
            logger.info("command met a deadlock or a serialization failure; attempt %d of %d", attempt + 1,
                        ATTEMPTS)
            backoff(attempt)
            continue
        except (ConcurrencyError, TransientStoreError) as exc:
            if attempt == ATTEMPTS:
                raise Conflict(f"{exc}; gave up after {ATTEMPTS} attempts: try again") from exc
            logger.info("command conflicted (%s); attempt %d of %d", exc, attempt + 1, ATTEMPTS)
            backoff(attempt)
            continue
        except StreamClosedError as exc:
            raise Conflict(str(exc)) from exc
        except SubjectErasedError as exc:
            raise Gone(str(exc)) from exc
        except StoreUnavailableError as exc:
            raise Unavailable(str(exc)) from exc
        return CommandResult(stream_id, saved.get(stream_id, 0), saved)
    raise AssertionError("unreachable")


def change_one(actor: Actor, load: Callable[[UnitOfWork], A], change: Callable[[A], None]) -> CommandResult:
    """A command on one aggregate: load it (the actor's rights checked by `load`), change it,
    save it."""
    def decide(uow: UnitOfWork) -> str:
        aggregate = load(uow)
        change(aggregate)
        uow.save(aggregate)
        return aggregate.stream_id

    return run_command(actor, decide)


def _check_what_was_read(uow: UnitOfWork, written: set[str], *, existing: bool) -> None:
    """The streams the decision read but does not save must still be as read (share-locked until
    the commit): a rule checked on them (consent, existence) still holds when this commits."""
    read = {sid: version for sid, version in uow.read_versions.items()
            if sid not in written and (version > 0) == existing}
    if read:
        changed = uow.service.event_store.recorder.check_versions(read)
        if changed is not None:
            stream_id, actual = changed
            raise ConcurrencyError(stream_id, read[stream_id], actual)


def backoff(attempt: int) -> None:
    """A short random pause before another attempt, growing with the attempt: two writers of
    the same speed would otherwise fall into step, the one behind always a moment late."""
    time.sleep(random.uniform(0, _BACKOFF_SECONDS * 2 ** attempt))
