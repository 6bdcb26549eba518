"""What every audit page shares: nothing editable, keyset pages, and filters that cost no scan.

Read-only means for everyone, superusers too: every add, delete and history URL and every
POST to a change URL answers 403 with a page that says why (a response, not an exception,
so the console shows one line, not a traceback).

Keyset pages: the changelist asks for one page plus one row after the last key shown
(`?after=`) or before the first (`?before=`); never COUNT(*), never OFFSET.
"""
from __future__ import annotations

from datetime import date, datetime, time, timezone

from django.contrib import admin
from django.contrib.admin.options import IncorrectLookupParameters
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import ValidationError
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.http import urlencode

AFTER, BEFORE = "after", "before"
CURSOR_PARAMS = (AFTER, BEFORE)


# Django's own changelist parameters, which mean nothing on a keyset page (sorting, page
# numbers, "show all", facet counts, the error flag): accepted and ignored.
IGNORED_PARAMS = frozenset({"o", "p", "all", "_facets", "e"})
MAX_PARAM_LENGTH = 1000


def refused(request, model_admin, what: str, status: int = 403) -> TemplateResponse:
    """A page that says what was refused and why (a response, never an exception: one line on
    the console, no traceback)."""
    context = {**model_admin.admin_site.each_context(request), "opts": model_admin.model._meta, "what": what,
               "title": "Not allowed" if status == 403 else "Bad request", "status": status}
    return TemplateResponse(request, "admin/eventsourcing_app/refused.html", context, status=status)


class ReadOnlyAdmin(admin.ModelAdmin):
    actions = None
    change_form_template = "admin/eventsourcing_app/readonly_change_form.html"

    def has_view_permission(self, request, obj=None):
        # The two groups' grants, not Django's has_perm (which counts any group, a permission
        # given to the user directly, and makes a superuser hold everything). A superuser
        # keeps the masked view; revealing, exporting in clear and erasing need the group.
        from ..application import compliance

        user = request.user
        return bool(user.is_active and user.is_staff and (
            user.is_superuser or compliance.may(user, f"view_{self.model._meta.model_name}")))

    def has_module_permission(self, request):
        return self.has_view_permission(request)

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def add_view(self, request, form_url="", extra_context=None):
        return refused(request, self, "The audit trail is written by the event store only: nothing can be added here.")

    def delete_view(self, request, object_id, extra_context=None):
        return refused(request, self, "The audit trail is immutable: nothing can be deleted, by anyone.")

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        if request.method not in ("GET", "HEAD"):
            return refused(request, self, "The audit trail is immutable: nothing can be changed, by anyone.")
        return super().changeform_view(request, object_id, form_url, extra_context)

    def changelist_view(self, request, extra_context=None):
        if request.method not in ("GET", "HEAD"):
            return refused(request, self, "The audit trail is immutable: there are no actions that change it.")
        return super().changelist_view(request, extra_context)

    def history_view(self, request, object_id, extra_context=None):
        # Django's history is of admin edits, and there are none: an object's history is its events.
        opts = self.model._meta
        return redirect(reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[object_id]))


# --- keyset pages ------------------------------------------------------------------------

def cursor_value(model_admin, raw: str):
    """The keyset column's value a page cursor names, or None if it names none."""
    try:
        return model_admin.model._meta.get_field(model_admin.keyset[0]).to_python(raw)
    except ValidationError:
        return None


def parse_date(raw: str) -> date | None:
    try:
        return date.fromisoformat(raw.strip())
    except ValueError:
        return None


class KeysetChangeList(ChangeList):
    def get_filters_params(self, params=None):
        params = super().get_filters_params(params)
        for name in CURSOR_PARAMS:
            params.pop(name, None)
        return params

    def get_query_string(self, new_params=None, remove=None):
        # A link that changes a filter or the search starts from the first page again.
        new_params = dict(new_params or {})
        for name in CURSOR_PARAMS:
            new_params.setdefault(name, None)
        return super().get_query_string(new_params, remove)

    def get_ordering(self, request, queryset):
        key, descending = self.model_admin.keyset
        return [f"-{key}" if descending else key]

    def _cursor(self, request, name):
        raw = request.GET.get(name)
        if raw in (None, ""):
            return None
        value = cursor_value(self.model_admin, raw)
        if value is None:  # KeysetAdmin.query_problem refuses it first, with a page saying so
            raise IncorrectLookupParameters(f"{name}={raw!r} is not a {self.model_admin.keyset[0]}")
        return value

    def get_results(self, request):
        key, descending = self.model_admin.keyset
        after, before = self._cursor(request, AFTER), self._cursor(request, BEFORE)
        qs = self.queryset
        older, newer = ("lt", "gt") if descending else ("gt", "lt")
        per_page = self.list_per_page
        if before is not None:
            qs = qs.filter(**{f"{key}__{newer}": before}).order_by(key if descending else f"-{key}")
        elif after is not None:
            qs = qs.filter(**{f"{key}__{older}": after})
        rows = list(qs[:per_page + 1])
        more = len(rows) > per_page
        rows = rows[:per_page]
        if before is not None:
            rows.reverse()
            self.has_newer, self.has_older = more, True
        else:
            self.has_newer, self.has_older = after is not None, more
        self.result_list = rows
        self.result_count = len(rows)
        # Equal counts keep the search box from claiming "N results" for what is one page.
        self.full_result_count = self.result_count
        self.show_full_result_count = False
        self.show_admin_actions = False
        self.can_show_all = False
        self.multi_page = False
        self.paginator = None
        first = getattr(rows[0], key) if rows else None
        last = getattr(rows[-1], key) if rows else None
        self.newer_url = self.get_query_string({BEFORE: first}) if self.has_newer and rows else ""
        self.older_url = self.get_query_string({AFTER: last}) if self.has_older and rows else ""


class KeysetAdmin(ReadOnlyAdmin):
    """`keyset = (field, descending)`: a unique, indexed field the pages walk along.

    Its list filters are filter classes (no bare field names), and the query string may hold
    only their parameters, the search and the cursors: Django's admin would otherwise take any
    `field__lookup=` from it, also on columns the page never shows (an oracle on ciphertext
    or wrapped keys, and a scan of the events table)."""

    keyset: tuple[str, bool] = ("pk", True)
    change_list_template = "admin/eventsourcing_app/keyset_change_list.html"
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts are COUNT(*) per choice
    sortable_by = ()
    list_per_page = 100

    def get_changelist(self, request, **kwargs):
        return KeysetChangeList

    def detail(self, request, object_id: str, *, reveal: bool):
        """The object's own page (GET at Django's change URL; POST at its reveal URL), or None
        for Django's read-only form."""
        return None

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method in ("GET", "HEAD") and type(self).detail is not KeysetAdmin.detail:
            return self.guarded(request, object_id, reveal=False)
        return super().change_view(request, object_id, form_url, extra_context)

    def reveal_view(self, request, object_id):
        return self.guarded(request, object_id, reveal=request.method == "POST")

    def guarded(self, request, object_id, *, reveal: bool):
        if not self.has_view_permission(request):
            return refused(request, self, "The audit trail needs the compliance or the privacy-officer group.")
        return self.detail(request, object_id, reveal=reveal)

    def view_path(self, route: str, view, name: str):
        """An extra URL of this admin, behind the admin's login like its own."""
        return path(route, self.admin_site.admin_view(view), name=f"eventsourcing_app_{name}")

    def selection_url(self, request, url_name: str) -> str:
        """An action's URL for this page's selection (its filters and search, no cursor)."""
        return reverse(f"admin:eventsourcing_app_{url_name}") + "?" + urlencode(self.selection(request))

    def filter_params(self) -> set[str]:
        names = set()
        for spec in self.list_filter:
            if isinstance(spec, type) and issubclass(spec, DateRangeFilter):
                names |= {f"{spec.field}_from", f"{spec.field}_to"}
            elif isinstance(spec, type) and getattr(spec, "parameter_name", None):
                names.add(spec.parameter_name)
            else:
                raise TypeError(f"{type(self).__name__}.list_filter: {spec!r} is not a filter class with a parameter")
        return names

    def query_problem(self, request) -> str | None:
        """What is wrong with the page's query string, said so that it can be fixed; None if nothing."""
        # (A NUL character never gets here: admin.security.RejectNulMiddleware answers it.)
        allowed = self.filter_params() | {"q", AFTER, BEFORE}
        dates = {name for spec in self.list_filter if isinstance(spec, type) and issubclass(spec, DateRangeFilter)
                 for name in (f"{spec.field}_from", f"{spec.field}_to")}
        for name, values in request.GET.lists():
            if name in IGNORED_PARAMS:
                continue
            if name not in allowed:
                return (f"{name[:60]!r} is not a filter of this page; the filters are: {', '.join(sorted(allowed))}")
            if any(len(value) > MAX_PARAM_LENGTH for value in values):
                return f"the value of {name!r} is longer than {MAX_PARAM_LENGTH} characters"
            if name in dates and any(value and parse_date(value) is None for value in values):
                # Dropping the filter instead would widen the page, and an export of "these" with it.
                return f"{name}={values[-1][:40]!r} is not a date like 2026-12-01"
        for name in CURSOR_PARAMS:
            raw = request.GET.get(name)
            if raw and cursor_value(self, raw) is None:
                return (f"{name}={raw[:40]!r} is not a {self.keyset[0]} of this list: follow the page links, "
                        "or remove it to start from the first page")
        return None

    def selection(self, request) -> dict[str, str]:
        """The filters and the search of the request (what an export of "these" covers)."""
        allowed = self.filter_params() | {"q"}
        return {name: value.strip() for name, value in sorted(request.GET.items()) if name in allowed and value.strip()}

    def changelist_view(self, request, extra_context=None):
        problem = self.query_problem(request)
        if problem is not None:
            return refused(request, self, problem, status=400)
        return super().changelist_view(request, extra_context)


# --- filters ----------------------------------------------------------------------------

class ChoiceFilter(admin.SimpleListFilter):
    """One of a fixed set of values of the column `parameter_name`: the choices come from the
    code (`options`), never from a SELECT DISTINCT over the table."""

    def options(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return self.options()

    def queryset(self, request, queryset):
        return queryset.filter(**{self.parameter_name: self.value()}) if self.value() else queryset


class TextFilter(admin.ListFilter):
    """An exact value typed into a box (actor, correlation id, ...): no list of choices, so no
    DISTINCT over the events table to build one."""

    parameter_name = ""
    template = "admin/eventsourcing_app/text_filter.html"
    placeholder = ""

    @classmethod
    def on(cls, parameter_name: str, title: str, placeholder: str = "") -> type["TextFilter"]:
        """The filter of one column, by its exact value."""
        return type(f"{parameter_name.title().replace('_', '')}Filter", (cls,),
                    {"parameter_name": parameter_name, "title": title, "placeholder": placeholder})

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        value = params.pop(self.parameter_name, None)
        if isinstance(value, list):
            value = value[-1] if value else None
        self.value = (value or "").strip()

    def has_output(self):
        return True

    def expected_parameters(self):
        return [self.parameter_name]

    def queryset(self, request, queryset):
        return self.filter(queryset, self.value) if self.value else queryset

    def filter(self, queryset, value):
        return queryset.filter(**{self.parameter_name: value})

    def choices(self, changelist):
        keep = [(name, value) for name, value in changelist.params.items()
                if name not in (self.parameter_name, *CURSOR_PARAMS)]
        yield {"value": self.value, "parameter": self.parameter_name, "hidden": keep, "placeholder": self.placeholder,
               "clear": changelist.get_query_string(remove=[self.parameter_name])}


class DateRangeFilter(admin.ListFilter):
    """From and to dates (UTC, both included) on one date field."""

    field = ""
    title = "date"
    template = "admin/eventsourcing_app/date_range_filter.html"

    @classmethod
    def on(cls, field: str, title: str) -> type["DateRangeFilter"]:
        """The filter of one date or time column, from and to (UTC)."""
        return type(f"{field.title().replace('_', '')}RangeFilter", (cls,), {"field": field, "title": title})

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        self.since_name, self.until_name = f"{self.field}_from", f"{self.field}_to"
        self.since = self._date(request, params, self.since_name)
        self.until = self._date(request, params, self.until_name)

    def _date(self, request, params, name):
        value = params.pop(name, None)
        if isinstance(value, list):
            value = value[-1] if value else None
        return parse_date(value) if value else None  # a bad one was refused by KeysetAdmin.query_problem

    def has_output(self):
        return True

    def expected_parameters(self):
        return [self.since_name, self.until_name]

    def queryset(self, request, queryset):
        if self.since:
            queryset = queryset.filter(**{f"{self.field}__gte": datetime.combine(self.since, time.min, timezone.utc)})
        if self.until:
            queryset = queryset.filter(**{f"{self.field}__lt": datetime.combine(self.until, time.max, timezone.utc)})
        return queryset

    def choices(self, changelist):
        keep = [(name, value) for name, value in changelist.params.items()
                if name not in (self.since_name, self.until_name, *CURSOR_PARAMS)]
        yield {"since_name": self.since_name, "until_name": self.until_name,
               "since": self.since.isoformat() if self.since else "", "until": self.until.isoformat() if self.until else "",
               "hidden": keep, "clear": changelist.get_query_string(remove=[self.since_name, self.until_name])}
