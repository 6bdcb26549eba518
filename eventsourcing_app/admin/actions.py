"""The admin's actions on the audit trail, each a confirmation page (GET) and the act (POST):
export, erasure of a child, integrity verification. The rules and the access log are the
application layer's (application/compliance.py); these views parse, call and render."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timezone

from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.http import Http404, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils.http import urlencode
from django.views import View

from ..application import audit, compliance
from ..application.actors import Actor
from ..application.errors import ApplicationError
from ..application.privacy import export_child_data, streams_of_child
from ..domain.child import ERASURE_REASONS
from ..models import Event, SubjectKey
from .base import refused


class AdminActionView(View):
    """Only for those who may see the page the action is on (a staff user in no group learns
    nothing here, not even a count or whether a child exists)."""

    model_admin = None
    template = ""

    def dispatch(self, request, *args, **kwargs):
        if not self.model_admin.has_view_permission(request):
            return refused(request, self.model_admin, "This needs the compliance or the privacy-officer group.")
        return super().dispatch(request, *args, **kwargs)

    def render(self, request, status=200, **context):
        base = {**self.model_admin.admin_site.each_context(request), "opts": self.model_admin.model._meta,
                "may_reveal": compliance.may(request.user, "reveal_personal_data"), **context}
        return TemplateResponse(request, self.template, base, status=status)


# --- export ---------------------------------------------------------------------------

def _cell(value):
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value  # a spreadsheet would run it as a formula (a reason, a name typed by anyone)
    return value


def _csv_lines(rows, columns):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    yield buffer.getvalue()
    for row in rows:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow([_cell(row[c]) for c in columns])
        yield buffer.getvalue()


def _json_lines(head: dict, rows, key="events"):
    """One JSON document, written as it is read (an export of millions of events never sits in memory)."""
    opening = json.dumps(head, ensure_ascii=False, default=str)[:-1]
    yield opening + (", " if head else "") + json.dumps(key) + ": [\n"
    first = True
    for row in rows:
        yield ("" if first else ",\n") + json.dumps(row, ensure_ascii=False, default=str)
        first = False
    yield "\n]}\n"


def download(rows, columns, export_format: str, name: str, head: dict):
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
    if export_format == "csv":
        response = StreamingHttpResponse(_csv_lines(rows, columns), content_type="text/csv; charset=utf-8")
    else:
        response = StreamingHttpResponse(_json_lines(head, rows), content_type="application/json")
    response["Content-Disposition"] = f'attachment; filename="{safe}-{stamp}.{export_format}"'
    return response


class ExportView(AdminActionView):
    """Events of a stream, a correlation chain or any filtered list (the event list's own
    filters and search, from the query string); or everything held about a child."""

    template = "admin/eventsourcing_app/export_confirm.html"
    subject = False

    def scope_of(self, request, object_id=None):
        """(scope, target, criteria, events, child id, data subject): what the export covers."""
        if self.subject:
            key = SubjectKey.objects.filter(pk=unquote(object_id)).first()
            if key is None or not key.subject.startswith("child:"):
                raise Http404(f"no child {unquote(object_id)!r}")
            child_id = key.subject.split(":", 1)[1]
            streams = streams_of_child(child_id)
            target = f"child.{child_id}"
            return ("subject", target, f"streams={','.join(streams)}", Event.objects.filter(stream_id__in=streams),
                    child_id, key.subject)
        problem = self.model_admin.query_problem(request)
        if problem is not None:
            raise ApplicationError(problem)
        selection = self.model_admin.selection(request)
        changelist = self.model_admin.get_changelist_instance(request)
        criteria = urlencode(selection)
        if set(selection) == {"stream"}:
            scope, target = "stream", selection["stream"]
        elif set(selection) == {"correlation_id"}:
            scope, target = "correlation", selection["correlation_id"]
        else:
            scope, target = "events", criteria or "all events"
        subject = selection.get("subject", "").strip()
        if subject and ":" not in subject:
            subject = f"child:{subject}"
        elif not subject and "stream" in selection:
            subject = ",".join(audit.subjects_of_stream(selection["stream"]))
        return scope, target, criteria, changelist.queryset, None, subject

    def page(self, request, status=200, **context):
        return self.render(request, status=status, subject=self.subject, **context)

    def get(self, request, object_id=None):
        try:
            scope, target, _, queryset, _, _ = self.scope_of(request, object_id)
        except ApplicationError as exc:
            return refused(request, self.model_admin, str(exc), status=400)
        return self.page(request, title=f"Export: {scope} {target}", scope=scope, target=target,
                         up_to=queryset.order_by("-position").values_list("position", flat=True).first())

    def post(self, request, object_id=None):
        try:
            scope, target, criteria, queryset, child_id, subject = self.scope_of(request, object_id)
        except ApplicationError as exc:
            return refused(request, self.model_admin, str(exc), status=400)
        export_format = request.POST.get("format", "")
        decrypted = self.subject or request.POST.get("decrypt") == "on"
        try:  # before anything is counted: a refused user costs no scan
            compliance.check_export(request.user, scope=scope, target=target, decrypted=decrypted)
        except ApplicationError as exc:
            return self.page(request, status=exc.http_status, title=f"Export: {scope} {target}", scope=scope,
                             target=target, error=str(exc))
        # Events are append-only: "matching the selection, up to this position" is exactly what is sent.
        up_to = queryset.order_by("-position").values_list("position", flat=True).first() or 0
        queryset = queryset.filter(position__lte=up_to)
        count = queryset.count()
        try:
            compliance.grant_export(request.user, scope=scope, target=target, export_format=export_format,
                                    reason=request.POST.get("reason"), decrypted=decrypted, event_count=count,
                                    up_to_position=up_to, criteria=criteria, subject=subject)
        except ApplicationError as exc:
            return self.page(request, status=exc.http_status, title=f"Export: {scope} {target}", scope=scope,
                             target=target, up_to=up_to, error=str(exc))
        head = {"scope": scope, "target": target, "criteria": criteria, "exported_by": request.user.get_username(),
                "exported_at": datetime.now(timezone.utc).isoformat(), "decrypted": decrypted,
                "events": count, "events_up_to_position": up_to}
        if child_id is not None and export_format == "json":
            head["subject_access_export"] = export_child_data(actor=Actor.staff(request.user.pk), child_id=child_id)
        rows = audit.iter_export_rows(queryset, reveal=decrypted)
        return download(rows, audit.EXPORT_COLUMNS, export_format, f"{scope}-{target}", head)


class AccessLogExportView(AdminActionView):
    template = "admin/eventsourcing_app/export_confirm.html"
    COLUMNS = ("id", "at", "username", "user_id", "action", "scope", "target", "subject", "criteria", "reason",
               "correlation_id", "decrypted", "export_format", "event_count", "up_to_position", "event_ids", "outcome")

    def selected(self, request):
        problem = self.model_admin.query_problem(request)
        if problem is not None:
            raise ApplicationError(problem)
        return urlencode(self.model_admin.selection(request)), self.model_admin.get_changelist_instance(request).queryset

    def get(self, request):
        try:
            criteria, _ = self.selected(request)
        except ApplicationError as exc:
            return refused(request, self.model_admin, str(exc), status=400)
        return self.render(request, title="Export the access log", scope="access log", target=criteria or "all",
                           access_log=True)

    def post(self, request):
        try:
            criteria, queryset = self.selected(request)
        except ApplicationError as exc:
            return refused(request, self.model_admin, str(exc), status=400)
        export_format = request.POST.get("format", "")
        try:  # before anything is counted
            compliance.check_export(request.user, scope="access-log", target=criteria or "all", decrypted=False)
        except ApplicationError as exc:
            return self.render(request, status=exc.http_status, title="Export the access log", scope="access log",
                               target=criteria or "all", access_log=True, error=str(exc))
        last = queryset.order_by("-id").values_list("id", flat=True).first() or 0
        queryset = queryset.filter(id__lte=last)
        try:
            compliance.grant_export(request.user, scope="access-log", target=criteria or "all",
                                    export_format=export_format, reason=request.POST.get("reason"),
                                    decrypted=False, event_count=queryset.count(), up_to_position=last,
                                    criteria=criteria)
        except ApplicationError as exc:
            return self.render(request, status=exc.http_status, title="Export the access log", scope="access log",
                               target=criteria or "all", access_log=True, error=str(exc))
        rows = ({c: (v.isoformat() if isinstance(v, datetime) else v) for c, v in zip(self.COLUMNS, values)}
                for values in queryset.order_by("id").values_list(*self.COLUMNS).iterator(chunk_size=2000))
        return download(rows, self.COLUMNS, export_format, "access-log", {"scope": "access log", "criteria": criteria})


# --- erasure --------------------------------------------------------------------------

class EraseView(AdminActionView):
    template = "admin/eventsourcing_app/erase_confirm.html"

    def child_of(self, object_id):
        key = SubjectKey.objects.filter(pk=unquote(object_id)).first()
        if key is None or not key.subject.startswith("child:"):
            raise Http404(f"no child {unquote(object_id)!r}")
        return key, key.subject.split(":", 1)[1]

    def get(self, request, object_id):
        key, child_id = self.child_of(object_id)
        return self.render(request, title=f"Erase the personal data of child {child_id}", key=key, child_id=child_id,
                           reasons=ERASURE_REASONS,
                           may_erase=compliance.may(request.user, "erase_child"))

    def post(self, request, object_id):
        key, child_id = self.child_of(object_id)
        try:
            report = compliance.erase_child(request.user, child_id=child_id, typed_child_id=request.POST.get("child_id"),
                                            reason_code=request.POST.get("reason_code", ""),
                                            note=request.POST.get("note"))
        except ApplicationError as exc:
            return self.render(request, status=exc.http_status, title=f"Erase the personal data of child {child_id}",
                               key=key, child_id=child_id, reasons=ERASURE_REASONS, error=str(exc),
                               may_erase=compliance.may(request.user, "erase_child"))
        messages.success(request, f"Erased: {report}")
        return redirect("admin:eventsourcing_app_subjectkey_change", object_id)


# --- integrity ------------------------------------------------------------------------

class VerifyView(AdminActionView):
    template = "admin/eventsourcing_app/verify.html"
    scope = "store"

    def target_of(self, object_id):
        if self.scope == "store":
            return ""
        name = unquote(object_id)
        if self.scope == "subject":
            if not name.startswith("child:"):
                raise Http404(f"no child {name!r}")
            return name.split(":", 1)[1]
        return name

    def get(self, request, object_id=None):
        target = self.target_of(object_id)
        return self.render(request, title=f"Verify the integrity of {self.scope} {target}".strip(), scope=self.scope,
                           target=target, may_verify=compliance.may(request.user, "verify_integrity"))

    def post(self, request, object_id=None):
        target = self.target_of(object_id)
        title = f"Verify the integrity of {self.scope} {target}".strip()
        try:
            result = compliance.verify(request.user, scope=self.scope, target=target,
                                       reason=request.POST.get("reason", ""))
        except ApplicationError as exc:
            return self.render(request, status=exc.http_status, title=title, scope=self.scope, target=target,
                               error=str(exc), may_verify=compliance.may(request.user, "verify_integrity"))
        return self.render(request, title=title, scope=self.scope, target=target, result=result,
                           problems=result.report.problems[:50], may_verify=True)


__all__ = ["AccessLogExportView", "EraseView", "ExportView", "VerifyView"]
