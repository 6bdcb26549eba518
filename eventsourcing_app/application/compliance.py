"""The compliance admin's commands: who may do what, and the access log of what was done.

Two groups, made by migration: `compliance` (reads the audit trail with personal fields
masked, exports it masked, runs integrity checks) and `privacy-officer` (also reveals personal
data, exports a data subject decrypted and erases a child). What a user may do comes from
these two groups' permissions only: not from being a superuser, nor from permissions given to
the user or to any other group.

Every reveal, export, erasure, integrity check, refused attempt and role change is written to
the access log (`AccessRecord`, append-only) with who, when, why and the request's correlation
id; a reveal or an export is recorded before anything is shown, so nothing leaves unrecorded.
"""
from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone

from django.contrib.auth.models import Permission

from .. import metrics
from ..domain.child import ERASURE_REASONS
from ..domain import DomainError
from ..eventstore.errors import EventStoreError, IntegrityCheckError
from ..eventstore.records import StoredEvent
from ..eventstore.serialization import subject_name
from ..kafka.config import KafkaSettings
from ..observability import current_correlation_id
from ..operations.verify import VerificationReport, verify_integrity
from .actors import Actor
from .errors import ApplicationError, NotFound, PermissionDenied
from .privacy import ErasureReport, erase_child_data, export_child_data, streams_of_child

logger = logging.getLogger(__name__)

COMPLIANCE_GROUP = "compliance"
OFFICER_GROUP = "privacy-officer"
APP_LABEL = "eventsourcing_app"
AUDIT_MODELS = ("stream", "event", "snapshot", "subjectkey", "accessrecord", "deadletter", "projectorstate")
GROUP_PERMISSIONS = {
    COMPLIANCE_GROUP: [f"view_{model}" for model in AUDIT_MODELS] + ["export_audit_trail", "verify_integrity"],
}
GROUP_PERMISSIONS[OFFICER_GROUP] = GROUP_PERMISSIONS[COMPLIANCE_GROUP] + [
    "reveal_personal_data", "export_data_subject", "erase_child"]

REASON_MIN, REASON_MAX = 5, 2000


class ReasonRequired(ApplicationError):
    """A reveal, export or erasure without a usable reason."""


def grants(user) -> frozenset[str]:
    """What the user may do in the audit trail: the permissions of the two groups they are in,
    nothing else. Not from being a superuser, not from permissions given to the user or to any
    other group: only joining these groups (or changing what they hold) grants anything, and
    both are written to the access log. One query per request, kept on the user object."""
    cached = getattr(user, "_compliance_grants", None)
    if cached is not None:
        return cached
    if not (user.is_authenticated and user.is_active and user.is_staff):
        codenames: frozenset[str] = frozenset()
    else:
        codenames = frozenset(Permission.objects.filter(
            content_type__app_label=APP_LABEL, group__user=user, group__name__in=list(GROUP_PERMISSIONS))
            .values_list("codename", flat=True))
    user._compliance_grants = codenames
    return codenames


def may(user, codename: str) -> bool:
    return codename in grants(user)


def require(user, codename: str, what: str, *, action: str = "", target: str = "") -> None:
    """Refuses what the user's groups do not allow; a refused reveal, export or erasure is
    itself recorded (someone tried)."""
    if may(user, codename):
        return
    group = OFFICER_GROUP if codename not in GROUP_PERMISSIONS[COMPLIANCE_GROUP] else COMPLIANCE_GROUP
    message = f"{user.get_username()} may not {what}: that needs the {group!r} group"
    if action and user.is_authenticated:
        record(user, action, "refused", target, outcome=f"refused: {message}")
    raise PermissionDenied(message)


def clean_reason(reason) -> str:
    """A reason a reader can read: at least REASON_MIN visible characters, no control codes."""
    text = reason.strip() if isinstance(reason, str) else ""
    if any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in text):
        raise ReasonRequired("the reason holds control characters (a NUL byte or the like); type it again as plain text")
    visible = sum(1 for c in text if not c.isspace() and unicodedata.category(c) not in ("Cf", "Cc", "Zs", "Mn"))
    if visible < REASON_MIN:
        raise ReasonRequired(f"give the reason (at least {REASON_MIN} visible characters: the request, ticket or "
                             "order this answers); it is written to the access log")
    if len(text) > REASON_MAX:
        raise ReasonRequired(f"the reason is {len(text)} characters long; keep it under {REASON_MAX}")
    return text


def record(who, action: str, scope: str, target: str, *, reason: str = "", decrypted: bool = False,
           export_format: str = "", event_count: int = 0, up_to_position: int | None = None,
           event_ids: list[str] | None = None, outcome: str = "", criteria: str = "", subject: str = ""):
    """Appends one record; `who` is a user, or an actor id ("user:<id>", "system:<name>") for
    management commands and scripts."""
    from ..models import AccessRecord

    user_id, username = _who(who)
    subject = subject or _subject_of_target(target)
    entry = AccessRecord(at=datetime.now(timezone.utc), user_id=user_id, username=username, action=action,
                         scope=scope, target=target[:500], reason=reason, correlation_id=current_correlation_id() or "-",
                         decrypted=decrypted, export_format=export_format, event_count=event_count,
                         up_to_position=up_to_position, event_ids=event_ids or [], outcome=outcome,
                         criteria=criteria or target, subject=subject)
    entry.save()
    logger.info("compliance %s of %s %s by %s (%s)", action, scope, target, entry.username, reason or "no reason given")
    return entry


def _subject_of_target(target: str) -> str:
    """The data subject of a record whose target starts with a stream id ("child.x v1-5"):
    so that refused attempts, checks and exports of a stream are found on the child's page."""
    from ..models import SubjectStream

    stream_id = target.split(" ", 1)[0]
    if stream_id.startswith("child."):
        return subject_name("child", stream_id.split(".", 1)[1])
    if "." not in stream_id or len(stream_id) > 200:
        return ""
    subjects = sorted(SubjectStream.objects.filter(stream_id=stream_id).values_list("subject", flat=True)[:2])
    return subjects[0] if subjects else ""


def _who(who) -> tuple[int, str]:
    """(user id, user name) of a user or an actor id; 0 and the actor id for system jobs and
    users that do not exist (any more)."""
    if not isinstance(who, str):
        return who.pk, who.get_username()
    from django.contrib.auth import get_user_model

    if who.startswith("user:"):
        user = get_user_model().objects.filter(pk=who.split(":", 1)[1]).first() if who[5:].isdigit() else None
        if user is not None:
            return user.pk, user.get_username()
    return 0, who[:150]


def ensure_staff_member(username: str, password: str, group: str):
    """A staff login in one of the two groups (made if missing; an existing one keeps its
    password). Returns (user, created)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    if group not in GROUP_PERMISSIONS:
        raise ApplicationError(f"group {group!r}: choose {COMPLIANCE_GROUP} or {OFFICER_GROUP}")
    user, created = get_user_model().objects.get_or_create(username=username, defaults={"is_staff": True})
    if created:
        user.set_password(password)
        user.save()
    user.groups.add(Group.objects.get(name=group))
    return user, created


def on_group_change(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    """m2m_changed of User.groups: joining or leaving one of the two groups is recorded in the
    access log, whoever did it (a superuser adding themselves too). Only real changes: an add
    of a member names nobody (Django sends an empty pk_set), a remove of a non-member neither."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    roles = set(GROUP_PERMISSIONS)

    def pairs(chosen):
        if reverse:  # group.user_set.add(...)
            if instance.name not in roles:
                return []
            users = get_user_model().objects.filter(pk__in=chosen) if chosen is not None else instance.user_set.all()
            if action == "pre_remove":
                users = users.filter(groups=instance)
            return [(user, instance.name) for user in users]
        groups = Group.objects.filter(pk__in=chosen) if chosen is not None else instance.groups.all()
        if action == "pre_remove":
            groups = groups.filter(user=instance)
        return [(instance, name) for name in groups.filter(name__in=roles).values_list("name", flat=True)]

    if action == "pre_remove" and pk_set:
        instance._compliance_leaving = pairs(pk_set)  # members now; recorded once they are gone
    elif action == "post_remove":
        for user, group in getattr(instance, "_compliance_leaving", []):
            _record_role(f"user:{user.pk} {user.get_username()}", f"left {group}")
        instance._compliance_leaving = []
    elif action == "pre_clear":
        for user, group in pairs(None):
            _record_role(f"user:{user.pk} {user.get_username()}", f"left {group}")
    elif action == "post_add" and pk_set:
        for user, group in pairs(pk_set):
            _record_role(f"user:{user.pk} {user.get_username()}", f"joined {group}")


def on_group_saving(sender, instance, **kwargs) -> None:
    """pre_save of a Group: renamed into or out of a role's name, it gives or takes the role
    from all its members at once."""
    roles = set(GROUP_PERMISSIONS)
    before = type(instance).objects.filter(pk=instance.pk).values_list("name", flat=True).first() if instance.pk else None
    if instance.pk and before != instance.name and (before in roles or instance.name in roles):
        members = ", ".join(instance.user_set.values_list("username", flat=True)[:50])
        _record_role(f"group {instance.name}", f"renamed from {before!r} (members: {members or 'none'})")


def on_group_deleting(sender, instance, **kwargs) -> None:
    """pre_delete of a Group: deleting a role group takes the role from its members, and no
    m2m signal says so."""
    if instance.name in GROUP_PERMISSIONS:
        members = ", ".join(instance.user_set.values_list("username", flat=True)[:50])
        _record_role(f"group {instance.name}", f"deleted (its members lose the role: {members or 'none'})")


def on_group_permissions_change(sender, instance, action, reverse, pk_set, **kwargs) -> None:
    """m2m_changed of Group.permissions: what the two groups may do changes for all their
    members at once, so it is recorded too."""
    from django.contrib.auth.models import Group

    if action == "pre_clear":
        change, chosen = "lost", None
    elif action in ("post_add", "post_remove") and pk_set:
        change, chosen = ("gained" if action == "post_add" else "lost"), pk_set
    else:
        return
    if reverse:  # permission.group_set.add(...)
        groups = Group.objects.filter(pk__in=chosen) if chosen is not None else instance.group_set.all()
        pairs = [(name, instance.codename) for name in groups.filter(name__in=list(GROUP_PERMISSIONS))
                 .values_list("name", flat=True)]
    else:
        if instance.name not in GROUP_PERMISSIONS:
            return
        permissions = Permission.objects.filter(pk__in=chosen) if chosen is not None else instance.permissions.all()
        pairs = [(instance.name, codename) for codename in permissions.values_list("codename", flat=True)]
    for group, codename in pairs:
        _record_role(f"group {group}", f"{change} permission {codename}")


def _record_role(target: str, outcome: str) -> None:
    from ..observability import current_actor

    record(current_actor() or "system", "role", "role", target, outcome=outcome)


# --- reveal and export ------------------------------------------------------------------

def reveal(user, events: list[StoredEvent], *, scope: str, target: str, reason) -> str:
    """Records that `user` sees these events' personal data, before it is shown."""
    require(user, "reveal_personal_data", "reveal personal data", action="reveal", target=target)
    reason = clean_reason(reason)
    # One subject per record, the one the page is about (a stream holds one child's data; a
    # rare second one is named in the criteria, and found through the event ids).
    subjects = sorted({e.metadata.data_subject for e in events if e.metadata.data_subject})
    record(user, "reveal", scope, target, reason=reason, decrypted=True, event_count=len(events),
           event_ids=[e.event_id for e in events], subject=subjects[0] if subjects else "",
           criteria=f"{target}; subjects {', '.join(subjects)}" if len(subjects) > 1 else "")
    metrics.PERSONAL_DATA_REVEALS.inc()
    return reason


@dataclass(frozen=True)
class ExportGrant:
    decrypted: bool
    reason: str


def check_export(user, *, scope: str, target: str, decrypted: bool) -> None:
    """Whether the user may make this export at all (checked before anything is counted)."""
    require(user, "export_audit_trail", "export the audit trail", action="export", target=target)
    if scope == "subject":
        require(user, "export_data_subject", "export a data subject", action="export", target=target)
    if decrypted:
        require(user, "reveal_personal_data", "export personal data in clear", action="export", target=target)


def grant_export(user, *, scope: str, target: str, export_format: str, reason, decrypted: bool,
                 event_count: int, up_to_position: int | None, criteria: str = "", subject: str = "") -> ExportGrant:
    """Checks and records an export before its first byte is sent. A subject's export, and
    any export in clear, is for privacy officers; compliance exports masked."""
    if export_format not in ("csv", "json"):
        raise ApplicationError(f"export format {str(export_format)[:20]!r}: choose csv or json")
    check_export(user, scope=scope, target=target, decrypted=decrypted)
    reason = clean_reason(reason)
    record(user, "export", scope, target, reason=reason, decrypted=decrypted, export_format=export_format,
           event_count=event_count, up_to_position=up_to_position, criteria=criteria, subject=subject)
    metrics.PERSONAL_DATA_EXPORTS.labels("true" if decrypted else "false").inc()
    return ExportGrant(decrypted, reason)


# --- erasure ---------------------------------------------------------------------------

def erase_child(user, *, child_id: str, typed_child_id: str, reason_code: str, note) -> ErasureReport:
    """Erases a child's personal data for a privacy officer: the erasure event carries the
    officer as actor and this request's correlation id; the access log the note."""
    target = f"child.{child_id}"
    require(user, "erase_child", "erase a child's personal data", action="erase", target=target)
    note = clean_reason(note)
    typed = typed_child_id.strip() if isinstance(typed_child_id, str) else ""
    if typed != child_id:
        raise ApplicationError(f"type the child id {child_id!r} exactly to confirm the erasure "
                               f"(you typed {typed[:80]!r}); nothing was erased")
    if reason_code not in ERASURE_REASONS:
        raise ApplicationError(f"erasure reason {str(reason_code)[:40]!r}: choose one of {', '.join(ERASURE_REASONS)}")
    return _erase_on_record(user, Actor.staff(user.pk), child_id, reason_code, note)


def _erase_on_record(who, actor: Actor, child_id: str, reason_code: str, note: str) -> ErasureReport:
    """The erasure between two access-log records: the request before anything is erased (an
    erasure never goes unrecorded), how it ended after."""
    target, subject = f"child.{child_id}", subject_name("child", child_id)
    record(who, "erase", "subject", target, reason=note, outcome=f"requested ({reason_code})", subject=subject)
    try:
        report = erase_child_data(actor=actor, child_id=child_id, reason=reason_code)
    except Exception as exc:
        record(who, "erase", "subject", target, reason=note, outcome=f"failed: {exc}", subject=subject)
        if isinstance(exc, (DomainError, EventStoreError)):
            raise ApplicationError(f"the erasure of child {child_id} failed: {exc}") from exc
        raise
    record(who, "erase", "subject", target, reason=note, event_count=report.encrypted_events,
           outcome=f"done: {report}", subject=subject)
    return report


def recorded_erasure(actor_id: str, *, child_id: str, reason_code: str) -> ErasureReport:
    """An erasure by a management command, recorded like the admin's (before and after)."""
    actor = Actor.operator(actor_id)  # a malformed actor id is refused before anything is written
    target = f"child.{child_id}"
    if not streams_of_child(child_id):
        raise NotFound(f"no child {child_id} (stream {target} does not exist)")
    return _erase_on_record(actor_id, actor, child_id, reason_code, f"manage.py forget_child --reason {reason_code}")


def recorded_subject_export(actor_id: str, *, child_id: str, destination: str) -> dict:
    """A subject access export by a management command, recorded before it is handed over."""
    export = export_child_data(actor=Actor.operator(actor_id), child_id=child_id)
    events = sum(len(stream) for stream in export["streams"].values())
    record(actor_id, "export", "subject", f"child.{child_id}", reason="manage.py export_child", decrypted=True,
           export_format="json", event_count=events, outcome=f"handed to {destination}",
           subject=subject_name("child", child_id))
    metrics.PERSONAL_DATA_EXPORTS.labels("true").inc()
    return export


# --- integrity ------------------------------------------------------------------------

@dataclass
class IntegrityResult:
    scope: str
    target: str
    report: VerificationReport
    streams: list[str]
    kafka_not_compared: str | None = None  # why the Kafka copies were not compared

    @property
    def ok(self) -> bool:
        return self.report.ok

    def __str__(self) -> str:
        r = self.report
        if self.kafka_not_compared:
            kafka = f"NOT compared with Kafka: {self.kafka_not_compared}"
        else:
            kafka = (f"{r.kafka_checked} events compared with Kafka ({r.unpublished} not yet published, "
                     f"{r.kafka_expired} removed from Kafka by retention)")
        head = f"{r.streams} streams, {r.events} events, {r.snapshots} snapshots checked; {kafka}"
        if r.ok:
            return f"verified: {head}"
        return f"NOT VERIFIED: {len(r.problems)} problems, first {r.first_problem}; {head}"


def verify(user, *, scope: str, target: str = "", reason: str = "") -> IntegrityResult:
    """Verifies a stream, a child's streams or the whole store (hash chains, snapshots, and the
    mirror against Kafka) and records that it ran and what it found. With Kafka unreachable
    the rest is checked and the result says Kafka was not compared, instead of waiting for it."""
    from ..operations.preflight import kafka_problem

    require(user, "verify_integrity", "run the integrity check")
    reason = clean_reason(reason) if isinstance(reason, str) and reason.strip() else ""  # optional: it harms nobody
    if scope == "stream":
        streams = [target]
    elif scope == "subject":
        streams = streams_of_child(target)
        if not streams:
            raise NotFound(f"no child {target}: nothing to verify")
    elif scope == "store":
        streams = []
    else:
        raise ApplicationError(f"integrity check of {str(scope)[:20]!r}: choose stream, subject or store")
    kafka = KafkaSettings.from_django()
    unreachable = kafka_problem(kafka.bootstrap_servers)
    report = VerificationReport()
    try:
        if scope == "store":
            report = verify_integrity(kafka_settings=None if unreachable else kafka)
        else:
            for stream_id in streams:
                report.merge(verify_integrity(stream_id, kafka_settings=None if unreachable else kafka))
    except IntegrityCheckError as exc:
        raise ApplicationError(str(exc)) from None
    result = IntegrityResult(scope, target or "everything", report, streams, kafka_not_compared=unreachable)
    record(user, "verify", scope, result.target, reason=reason, outcome=str(result),
           subject=subject_name("child", target) if scope == "subject" else "")
    return result
