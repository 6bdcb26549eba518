"""Who runs a command: an authenticated user ("user:<id>") or a named system job ("system:<name>").

The id goes into every event's metadata as its actor. A user acts either as a parent (their
parent id given: the command handlers let them act only on their own family) or as staff
(`Actor.staff`, e.g. a privacy officer in the admin). A user that is neither is refused by
every family command: forgetting the parent id never opens other families. System jobs
(management commands, Celery tasks, the device service) act without that limit.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..domain.ids import ACTOR_ID
from .errors import InvalidActor


@dataclass(frozen=True)
class Actor:
    id: str
    parent_id: str | None = None  # set when a user acts as this parent
    is_staff: bool = False  # a user acting for the platform (admin, support), not as a parent

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not ACTOR_ID.fullmatch(self.id):
            raise InvalidActor(f"actor {self.id!r} is not 'user:<id>' or 'system:<name>' (letters, digits, . _ -)")
        if self.parent_id is not None and (not isinstance(self.parent_id, str) or not self.parent_id):
            raise InvalidActor(f"parent_id {self.parent_id!r} of actor {self.id} must be a non-empty string")
        if self.parent_id is not None and (self.is_staff or self.is_system):
            raise InvalidActor(f"actor {self.id} acts as parent {self.parent_id}: it can be neither staff nor a system job")

    @classmethod
    def system(cls, name: str) -> "Actor":
        return cls(f"system:{name}")

    @classmethod
    def user(cls, user_id, parent_id: str | None = None) -> "Actor":
        """A user; with `parent_id`, acting as that parent."""
        return cls(f"user:{user_id}", parent_id)

    @classmethod
    def staff(cls, user_id) -> "Actor":
        """A user acting for the platform (any family), e.g. a privacy officer."""
        return cls(f"user:{user_id}", is_staff=True)

    @classmethod
    def operator(cls, actor_id: str) -> "Actor":
        """Whoever runs a management command: a system job ("system:<name>"), else staff."""
        return cls(actor_id, is_staff=not str(actor_id).startswith("system:"))

    @property
    def is_parent(self) -> bool:
        return self.parent_id is not None

    @property
    def is_system(self) -> bool:
        return self.id.startswith("system:")

    @property
    def acts_for_any_family(self) -> bool:
        return self.is_system or self.is_staff
