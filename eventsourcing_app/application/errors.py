"""What a command can fail with beyond the domain's own rules (DomainError: 400-worthy).

Each error carries the HTTP status an API would answer with, so entry points map them without
knowing each one.
"""
from __future__ import annotations


class ApplicationError(Exception):
    """A command was refused before anything was saved."""

    http_status = 400


class NotFound(ApplicationError):
    """The parent, child or conversation named does not exist."""

    http_status = 404


class PermissionDenied(ApplicationError):
    """The actor may not do this (a parent acts only on their own family)."""

    http_status = 403


class ConsentRequired(ApplicationError):
    """No parental consent in force for the child: nothing is registered or recorded for it."""

    http_status = 403


class Conflict(ApplicationError):
    """Others kept changing the same streams; the command was tried again and gave up."""

    http_status = 409


class Gone(ApplicationError):
    """The child's personal data was erased: nothing more is stored about it."""

    http_status = 410


class Unavailable(ApplicationError):
    """The database could not be reached; the command may be retried as it is."""

    http_status = 503


class InvalidPassword(ApplicationError):
    """A new account's password does not pass the configured password validators."""


class AccountExists(ApplicationError):
    """The email already logs in to an account, or the parent already has one."""

    http_status = 409


class InvalidActor(ApplicationError):
    """The actor is not "user:<id>" or "system:<name>"."""
