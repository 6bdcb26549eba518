"""The audit trail's pages: streams, events, snapshots, data subjects and the access log.

Lists are keyset pages over indexed columns; detail pages are rendered from the application
layer (application/audit.py) with personal fields masked; reveal, export, erasure and
integrity checks are the views of admin/actions.py, linked from here.
"""
from __future__ import annotations

import uuid

from django.contrib import admin
from django.db.models import F, OuterRef, Q, Subquery
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode

from ..application import audit, compliance
from ..domain.aggregate import aggregate_classes
from ..domain.events import event_classes
from ..eventstore.serialization import subject_name
from ..models import AccessRecord, DeadLetter, Event, ProjectorState, Snapshot, Stream, SubjectKey, SubjectStream
from . import actions
from .base import ChoiceFilter, DateRangeFilter, KeysetAdmin, TextFilter

TIMELINE_PAGE = 50
CORRELATED_SHOWN = 100
UNPUBLISHED_LISTED = 1000


def stream_types() -> list[str]:
    from django.conf import settings

    return sorted(set(aggregate_classes()) | set(settings.EVENTSTORE["STREAM_TYPES"]))


def bare_id_streams(term: str) -> list[str]:
    """`child-123` names child.child-123, conversation.child-123, ...: exact primary-key lookups."""
    return [f"{kind}.{term}" for kind in stream_types()]


def event_list_url(**params) -> str:
    return reverse("admin:eventsourcing_app_event_changelist") + "?" + urlencode(params)


def event_url(position: int) -> str:
    return reverse("admin:eventsourcing_app_event_change", args=[position])


def stream_url(stream_id: str) -> str:
    from django.contrib.admin.utils import quote

    return reverse("admin:eventsourcing_app_stream_change", args=[quote(stream_id)])


def subject_url(subject: str) -> str:
    from django.contrib.admin.utils import quote

    return reverse("admin:eventsourcing_app_subjectkey_change", args=[quote(subject)])


def common_context(model_admin, request, **extra) -> dict:
    user = request.user
    return {**model_admin.admin_site.each_context(request), "opts": model_admin.model._meta,
            "may_reveal": compliance.may(user, "reveal_personal_data"),
            "may_export": compliance.may(user, "export_audit_trail"),
            "may_export_subject": compliance.may(user, "export_data_subject"),
            "may_erase": compliance.may(user, "erase_child"),
            "may_verify": compliance.may(user, "verify_integrity"), "mask": audit.MASK, **extra}


# --- filters ----------------------------------------------------------------------------

class EventTypeFilter(ChoiceFilter):
    title = "event type"
    parameter_name = "event_type"

    def options(self):
        return [(name, name) for name in sorted(event_classes())]


class StreamTypeFilter(ChoiceFilter):
    title = "stream type"
    parameter_name = "stream_type"

    def options(self):
        return [(name, name) for name in stream_types()]


class PublicationFilter(admin.SimpleListFilter):
    title = "publication"
    parameter_name = "published"

    def lookups(self, request, model_admin):
        return [("yes", "published to Kafka"), ("no", "not yet published")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(published_at__isnull=False)
        if self.value() == "no":
            # The streams' partial index of unpublished streams names a handful, normally; their
            # events are then found by (stream, version), never by reading every event.
            behind = Stream.objects.filter(version__gt=F("published_version")).values_list("stream_id", flat=True)
            few = list(behind[:UNPUBLISHED_LISTED + 1])
            streams = few if len(few) <= UNPUBLISHED_LISTED else Subquery(behind)
            return queryset.filter(stream_id__in=streams, published_at__isnull=True)
        return queryset


class StreamPublicationFilter(PublicationFilter):
    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(version=F("published_version"))
        if self.value() == "no":
            return queryset.filter(version__gt=F("published_version"))
        return queryset


class StreamFilter(TextFilter):
    title = "stream"
    parameter_name = "stream"
    placeholder = "child.child-123"

    def filter(self, queryset, value):
        return queryset.filter(stream_id=value)


# Exact values typed in (each column indexed), and date ranges.
CorrelationFilter = TextFilter.on("correlation_id", "correlation id")
CausationFilter = TextFilter.on("causation_id", "causation id")
ActorFilter = TextFilter.on("actor", "actor", placeholder="user:17")
UserFilter = TextFilter.on("username", "user")
RecordedFilter = DateRangeFilter.on("recorded_at", "recorded")  # the store's clock: the order rows lie in (BRIN)
StreamUpdatedFilter = DateRangeFilter.on("updated_at", "last event")
AccessAtFilter = DateRangeFilter.on("at", "time")


class SubjectFilter(TextFilter):
    title = "data subject"
    parameter_name = "subject"
    placeholder = "child-123 or child:child-123"

    def filter(self, queryset, value):
        subject = value if ":" in value else subject_name("child", value)
        streams = SubjectStream.objects.filter(subject=subject).values("stream_id")
        return queryset.filter(Q(stream_id__in=Subquery(streams)) | Q(stream_id=f"child.{subject.split(':', 1)[1]}"))


class RecordSubjectFilter(TextFilter):
    title = "data subject"
    parameter_name = "subject"
    placeholder = "child-123 or child:child-123"

    def filter(self, queryset, value):
        return queryset.filter(subject=value if ":" in value else subject_name("child", value))  # indexed


class ActionFilter(ChoiceFilter):
    title = "action"
    parameter_name = "action"

    def options(self):
        return AccessRecord.ACTIONS


class ProjectorFilter(ChoiceFilter):
    title = "projector"
    parameter_name = "projector"

    def options(self):
        from ..readside.projectors import PROJECTORS

        return [(name, name) for name in sorted(PROJECTORS)]


class ResolvedFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "resolved"

    def lookups(self, request, model_admin):
        return [("no", "waiting (its stream is held)"), ("yes", "applied since")]

    def queryset(self, request, queryset):
        if self.value() in ("yes", "no"):
            return queryset.filter(resolved_at__isnull=self.value() == "no")
        return queryset


# --- streams ----------------------------------------------------------------------------

@admin.register(Stream)
class StreamAdmin(KeysetAdmin):
    keyset = ("stream_id", False)
    list_display = ("stream_link", "stream_type", "version", "event_count", "first_event", "last_event",
                    "latest_snapshot", "publication")
    list_display_links = None
    list_filter = (StreamTypeFilter, StreamUpdatedFilter, StreamPublicationFilter)
    search_fields = ("stream_id",)
    search_help_text = "A stream id (child.child-123), a bare aggregate id (child-123) or the start of a stream id."

    def get_queryset(self, request):
        latest = Snapshot.objects.filter(stream_id=OuterRef("pk")).order_by("-version").values("version")[:1]
        return super().get_queryset(request).annotate(snapshot_version=Subquery(latest))

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(stream_id=term) | Q(stream_id__in=bare_id_streams(term)) | Q(stream_id__startswith=term)
        return queryset.filter(match), False

    @admin.display(description="stream")
    def stream_link(self, obj):
        return format_html('<a href="{}">{}</a>', stream_url(obj.stream_id), obj.stream_id)

    @admin.display(description="events")
    def event_count(self, obj):
        return obj.version  # versions run 1..n without gaps

    @admin.display(description="first event (UTC)")
    def first_event(self, obj):
        return audit.utc_text(obj.created_at)

    @admin.display(description="last event (UTC)")
    def last_event(self, obj):
        return audit.utc_text(obj.updated_at)

    @admin.display(description="latest snapshot")
    def latest_snapshot(self, obj):
        return f"v{obj.snapshot_version}" if obj.snapshot_version else "-"

    @admin.display(description="publication")
    def publication(self, obj):
        behind = obj.version - obj.published_version
        return "published" if behind <= 0 else f"{behind} to publish"

    def changelist_view(self, request, extra_context=None):
        tools = []
        if compliance.may(request.user, "verify_integrity"):
            tools.append({"label": "Verify everything", "url": reverse("admin:eventsourcing_app_verify_store")})
        return super().changelist_view(request, {"keyset_tools": tools, **(extra_context or {})})

    def get_urls(self):
        return [
            self.view_path("<path:object_id>/reveal/", self.reveal_view, "stream_reveal"),
            self.view_path("verify/", actions.VerifyView.as_view(model_admin=self, scope="store"), "verify_store"),
            self.view_path("<path:object_id>/verify/", actions.VerifyView.as_view(model_admin=self, scope="stream"),
                           "verify_stream"),
        ] + super().get_urls()

    def detail(self, request, object_id, *, reveal: bool):
        from django.contrib.admin.utils import unquote

        stream = self.get_object(request, unquote(object_id))
        if stream is None:
            raise Http404(f"no stream {unquote(object_id)!r}")
        error, status = None, 200
        try:
            start = max(int(request.GET.get("from", 0)), 0)
        except ValueError:
            start, error, status = 0, f"from={request.GET.get('from')!r} is not a version number", 400
        state_version = request.GET.get("state_at", "")
        events = audit.timeline(stream.stream_id, start, TIMELINE_PAGE)
        state, state_error = None, None
        if state_version:
            try:
                state_version = int(state_version)
                if not 1 <= state_version <= stream.version:
                    raise ValueError
            except ValueError:
                state_error = f"state_at={request.GET.get('state_at')!r}: give a version from 1 to {stream.version}"
                state_version = ""
        if reveal:
            try:
                compliance.reveal(request.user, events, scope="stream",
                                  target=f"{stream.stream_id} v{start + 1}-{start + len(events)}"
                                         + (f", state at v{state_version}" if state_version else ""),
                                  reason=request.POST.get("reason"))
            except compliance.ApplicationError as exc:
                reveal, error, status = False, str(exc), exc.http_status
        if state_version:
            try:
                state = audit.state_at(stream.stream_id, state_version, reveal=reveal)
            except Exception as exc:  # noqa: BLE001 - shown, never a 500
                state_error = str(exc)
        changes = audit.changes_of(stream.stream_id, events, reveal=reveal)
        rows = [{"stored": e, "url": event_url(e.metadata.global_position),
                 "occurred": audit.utc_text(e.metadata.timestamp),
                 "payload": audit.payload_of(e, reveal), "changes": changes.get(e.version)} for e in events]
        last = start + len(events)
        subjects = sorted({e.metadata.data_subject for e in events if e.metadata.data_subject})
        context = common_context(
            self, request, title=f"Stream {stream.stream_id}", stream=stream, rows=rows, revealed=reveal,
            error=error, state=state, state_version=state_version, state_error=state_error,
            snapshot=audit.latest_snapshot(stream.stream_id),
            created=audit.utc_text(stream.created_at), updated=audit.utc_text(stream.updated_at),
            behind=stream.version - stream.published_version,
            newer_url=f"?from={max(start - TIMELINE_PAGE, 0)}" if start > 0 else "",
            older_url=f"?from={last}" if last < stream.version else "",
            export_url=reverse("admin:eventsourcing_app_event_export") + "?" + urlencode({"stream": stream.stream_id}),
            verify_url=reverse("admin:eventsourcing_app_verify_stream", args=[object_id]),
            reveal_url=reverse("admin:eventsourcing_app_stream_reveal", args=[object_id]) + "?" + request.GET.urlencode(),
            subjects=[(s, subject_url(s)) for s in subjects],
            migrated_to=stream.migrated_to and stream_url(stream.migrated_to),
            migrated_from=stream.migrated_from and stream_url(stream.migrated_from),
            events_url=event_list_url(stream=stream.stream_id))
        return TemplateResponse(request, "admin/eventsourcing_app/stream_detail.html", context, status=status)


# --- events -----------------------------------------------------------------------------

@admin.register(Event)
class EventAdmin(KeysetAdmin):
    keyset = ("position", True)
    list_display = ("position_link", "stream_link", "version", "event_type", "occurred", "actor", "correlation",
                    "published")
    list_display_links = None
    list_filter = (EventTypeFilter, StreamFilter, ActorFilter, SubjectFilter, CorrelationFilter, CausationFilter,
                   RecordedFilter, PublicationFilter)
    search_fields = ("event_id",)
    search_help_text = "An event id, a stream id (or bare aggregate id), a correlation id or a causation id."

    def get_queryset(self, request):
        # The list never shows payloads: do not fetch them (a page of 100 events stays small).
        return super().get_queryset(request).defer("payload", "chain_hash")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(correlation_id=term) | Q(causation_id=term)
        try:
            match |= Q(event_id=uuid.UUID(term))
        except ValueError:
            match |= Q(stream_id=term) | Q(stream_id__in=bare_id_streams(term))
        return queryset.filter(match), False

    @admin.display(description="position")
    def position_link(self, obj):
        return format_html('<a href="{}">{}</a>', event_url(obj.position), obj.position)

    @admin.display(description="stream")
    def stream_link(self, obj):
        return format_html('<a href="{}">{}</a>', stream_url(obj.stream_id), obj.stream_id)

    @admin.display(description="occurred (UTC)")
    def occurred(self, obj):
        return audit.utc_text(obj.occurred_at)

    @admin.display(description="correlation id")
    def correlation(self, obj):
        if not obj.correlation_id:
            return "-"
        return format_html('<a href="{}">{}</a>', event_list_url(correlation_id=obj.correlation_id), obj.correlation_id)

    @admin.display(boolean=True)
    def published(self, obj):
        return obj.published_at is not None

    def changelist_view(self, request, extra_context=None):
        tools = []
        if compliance.may(request.user, "export_audit_trail"):
            tools.append({"label": "Export these events", "url": self.selection_url(request, "event_export")})
        return super().changelist_view(request, {"keyset_tools": tools, "keyset_newer_label": "Newer events",
                                                 "keyset_older_label": "Older events", **(extra_context or {})})

    def get_urls(self):
        return [
            self.view_path("export/", actions.ExportView.as_view(model_admin=self), "event_export"),
            self.view_path("<path:object_id>/reveal/", self.reveal_view, "event_reveal"),
        ] + super().get_urls()

    def detail(self, request, object_id, *, reveal: bool):
        try:
            position = int(object_id)
        except ValueError:
            raise Http404(f"no event at position {object_id!r}") from None
        found = audit.event_at(position)
        if found is None:
            raise Http404(f"no event at position {position}")
        stored, times = found
        meta = stored.metadata
        error, status = None, 200
        if reveal:
            try:
                compliance.reveal(request.user, [stored], scope="event", target=f"{meta.stream_id} v{meta.version}",
                                  reason=request.POST.get("reason"))
            except compliance.ApplicationError as exc:
                reveal, error, status = False, str(exc), exc.http_status
        correlated = audit.correlated_events(meta.correlation_id, CORRELATED_SHOWN + 1) if meta.correlation_id else []
        cause = audit.cause_of(meta.causation_id)
        changes = audit.changes_of(meta.stream_id, [stored], reveal=reveal).get(meta.version)
        kafka = stored.kafka_position
        context = common_context(
            self, request, title=f"Event {meta.stream_id} v{meta.version}: {meta.event_type}", stored=stored,
            meta=meta, revealed=reveal, error=error, payload=audit.payload_of(stored, reveal),
            sensitive=audit.sensitive_names(stored), changes=changes,
            occurred=audit.utc_text(meta.timestamp), recorded=audit.utc_text(times["recorded_at"]),
            published=audit.utc_text(times["published_at"]), kafka=kafka, chain_hash=bytes(stored.chain_hash).hex(),
            link=audit.chain_link(stored), stream_link=stream_url(meta.stream_id),
            subject_link=meta.data_subject and subject_url(meta.data_subject),
            correlated=[{"position": p, "stream_id": s, "version": v, "event_type": t, "occurred": audit.utc_text(o),
                         "url": event_url(p), "this": p == meta.global_position}
                        for p, s, v, t, o in correlated[:CORRELATED_SHOWN]],
            correlated_more=len(correlated) > CORRELATED_SHOWN,
            correlated_url=meta.correlation_id and event_list_url(correlation_id=meta.correlation_id),
            cause=cause and {"url": event_url(cause[0]), "label": f"{cause[1]} v{cause[2]} {cause[3]}"},
            children=[{"url": event_url(p), "label": f"{s} v{v} {t}"} for p, s, v, t in audit.children_of(meta.event_id)],
            reveal_url=reverse("admin:eventsourcing_app_event_reveal", args=[position]),
            export_url=meta.correlation_id and reverse("admin:eventsourcing_app_event_export") + "?" + urlencode(
                {"correlation_id": meta.correlation_id}),
            verify_url=reverse("admin:eventsourcing_app_verify_stream", args=[meta.stream_id]))
        return TemplateResponse(request, "admin/eventsourcing_app/event_detail.html", context, status=status)


# --- snapshots --------------------------------------------------------------------------

@admin.register(Snapshot)
class SnapshotAdmin(KeysetAdmin):
    keyset = ("id", True)
    list_display = ("stream_id", "version", "aggregate_type", "schema_version", "created", "kafka_offset")
    list_filter = (StreamFilter,)
    search_fields = ("stream__stream_id",)
    exclude = ("state", "seal")  # personal fields are encrypted; the state is read on the stream's page

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(stream_id=term) | Q(stream_id__in=bare_id_streams(term))), False

    @admin.display(description="created (UTC)")
    def created(self, obj):
        return audit.utc_text(obj.created_at)


# --- data subjects ----------------------------------------------------------------------

@admin.register(SubjectKey)
class DataSubjectAdmin(KeysetAdmin):
    """A child (or parent) whose personal data the store holds under its own key; never the key."""

    keyset = ("subject", False)
    list_display = ("subject_link", "state", "created", "destroyed")
    list_display_links = None
    search_fields = ("subject",)
    search_help_text = "A child id (child-123), a subject (child:child-123) or the start of one."

    def get_queryset(self, request):
        return super().get_queryset(request).defer("wrapped_key")

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        match = Q(subject=term) | Q(subject__startswith=term)
        if ":" not in term:
            match |= Q(subject__in=[subject_name(kind, term) for kind in ("child", "parent")])
        return queryset.filter(match), False

    @admin.display(description="data subject")
    def subject_link(self, obj):
        return format_html('<a href="{}">{}</a>', subject_url(obj.subject), obj.subject)

    @admin.display(description="key")
    def state(self, obj):
        return "erased" if obj.destroyed_at else "active"

    @admin.display(description="created (UTC)")
    def created(self, obj):
        return audit.utc_text(obj.created_at)

    @admin.display(description="erased (UTC)")
    def destroyed(self, obj):
        return audit.utc_text(obj.destroyed_at) or "-"

    def get_urls(self):
        return [
            self.view_path("<path:object_id>/erase/", actions.EraseView.as_view(model_admin=self), "subject_erase"),
            self.view_path("<path:object_id>/export/", actions.ExportView.as_view(model_admin=self, subject=True),
                           "subject_export"),
            self.view_path("<path:object_id>/verify/", actions.VerifyView.as_view(model_admin=self, scope="subject"),
                           "verify_subject"),
        ] + super().get_urls()

    def detail(self, request, object_id, *, reveal: bool):
        from django.contrib.admin.utils import unquote

        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404(f"no data subject {unquote(object_id)!r}")
        return TemplateResponse(request, "admin/eventsourcing_app/subject_detail.html",
                                common_context(self, request, **subject_facts(key, object_id)))


def subject_facts(key: SubjectKey, object_id: str) -> dict:
    summary = audit.subject_summary(key.subject)
    erased, parent = summary.erasure, summary.parent_stream
    return {
        "title": f"Data subject {key.subject}", "key": key, "kind": summary.kind, "subject_id": summary.subject_id,
        "key_state": "erased" if key.destroyed_at else "active", "created": audit.utc_text(key.created_at),
        "destroyed": audit.utc_text(key.destroyed_at),
        "erased": erased and {"url": event_url(erased["position"]), "by": erased["erased_by"],
                              "reason": erased["reason"], "correlation_url": erased["correlation_id"]
                              and event_list_url(correlation_id=erased["correlation_id"])},
        "streams": [{"row": s, "url": stream_url(s.stream_id), "updated": audit.utc_text(s.updated_at)}
                    for s in summary.streams],
        "parent_stream": parent and {"row": parent, "url": stream_url(parent.stream_id),
                                     "consent_url": event_list_url(stream=parent.stream_id)},
        "events_url": event_list_url(subject=key.subject),
        "erase_url": reverse("admin:eventsourcing_app_subject_erase", args=[object_id]),
        "export_url": reverse("admin:eventsourcing_app_subject_export", args=[object_id]),
        "verify_url": reverse("admin:eventsourcing_app_verify_subject", args=[object_id]),
        "access_url": reverse("admin:eventsourcing_app_accessrecord_changelist") + "?" + urlencode(
            {"subject": key.subject}),
    }


# --- the access log ---------------------------------------------------------------------

@admin.register(AccessRecord)
class AccessRecordAdmin(KeysetAdmin):
    keyset = ("id", True)
    list_display = ("when", "username", "action", "scope", "target", "subject", "decrypted", "event_count",
                    "reason", "correlation_id")
    list_filter = (ActionFilter, RecordSubjectFilter, UserFilter, AccessAtFilter)
    search_fields = ("target",)
    search_help_text = "A stream id, child or filter the record names (its start), or a correlation id."
    readonly_fields = ("when", "user_id", "username", "action", "scope", "target", "subject", "criteria", "reason",
                       "correlation_id",
                       "decrypted", "export_format", "event_count", "up_to_position", "event_ids", "outcome")
    exclude = ("at",)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(Q(target__startswith=term) | Q(correlation_id=term)), False

    @admin.display(description="when (UTC)")
    def when(self, obj):
        return audit.utc_text(obj.at)

    def changelist_view(self, request, extra_context=None):
        tools = []
        if compliance.may(request.user, "export_audit_trail"):
            tools.append({"label": "Export the access log", "url": self.selection_url(request, "access_export")})
        return super().changelist_view(request, {"keyset_tools": tools, **(extra_context or {})})

    def get_urls(self):
        return [self.view_path("export/", actions.AccessLogExportView.as_view(model_admin=self), "access_export")
                ] + super().get_urls()


# --- the read side's operational records -------------------------------------------------

@admin.register(DeadLetter)
class DeadLetterAdmin(KeysetAdmin):
    """Events a projector could not apply; their streams wait behind them until
    `manage.py projections retry-dead-letters` applies them."""

    keyset = ("id", True)
    list_display = ("projector", "stream_id", "version", "event_type", "attempts", "first_failed_at",
                    "last_failed_at", "resolved_at")
    list_filter = (ProjectorFilter, ResolvedFilter, StreamFilter)
    search_fields = ("event_id",)

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        return (queryset.filter(Q(stream_id=term) | Q(event_id=term)) if term else queryset), False

    # The error text may quote a decrypted value and is not erased with the child: not shown here.
    exclude = ("error",)


@admin.register(ProjectorState)
class ProjectorStateAdmin(KeysetAdmin):
    keyset = ("name", False)
    list_display = ("name", "active_generation", "building_generation", "switched_at")
