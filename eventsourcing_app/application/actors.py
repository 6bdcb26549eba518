"""Who runs a command: an authenticated user ("user:<id>") or a named system job ("system:<name>").

The id goes into every event's metadata as its actor. A user acting as a parent also names
their parent id: the command handlers then let them act only on their own family. System jobs
(management commands, Celery tasks, the device service) and staff act without that limit.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import InvalidActor

_ACTOR = re.compile(r"(user|system):[A-Za-z0-9._\-]{1,100}")


@dataclass(frozen=True)
class Actor:
    id: str
    parent_id: str | None = None  # set when a user acts as this parent

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ACTOR.fullmatch(self.id):
            raise InvalidActor(f"actor {self.id!r} is not 'user:<id>' or 'system:<name>' (letters, digits, . _ -)")
        if self.parent_id is not None and (not isinstance(self.parent_id, str) or not self.parent_id):
            raise InvalidActor(f"parent_id {self.parent_id!r} of actor {self.id} must be a non-empty string")

    @classmethod
    def system(cls, name: str) -> "Actor":
        return cls(f"system:{name}")

    @classmethod
    def user(cls, user_id, parent_id: str | None = None) -> "Actor":
        return cls(f"user:{user_id}", parent_id)

    @property
    def is_parent(self) -> bool:
        return self.parent_id is not None
