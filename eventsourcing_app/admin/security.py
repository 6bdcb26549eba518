"""The admin's login limit (django-axes), kept to the admin's login form."""
from __future__ import annotations

from axes.backends import AxesStandaloneBackend


class AdminLoginLimitBackend(AxesStandaloneBackend):
    """Refuses a locked-out user name and address at the admin's login. Calls of
    `authenticate()` without a request (scripts, the shell) are not counted, instead of
    failing; AXES_ONLY_ADMIN_SITE leaves the API's token endpoint to its own throttle."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is None:
            return None
        return super().authenticate(request, username, password, **kwargs)


class RejectNulMiddleware:
    """Answers 400 to an admin request with a NUL character in its path, query or form: no
    PostgreSQL text can hold one, so every view would fail on it in the database (a 500 with
    a traceback) instead of saying what was wrong."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.prefix = None

    def __call__(self, request):
        if self.prefix is None:
            from django.urls import reverse

            self.prefix = reverse("admin:index")
        if request.path.startswith(self.prefix):
            problem = self.problem(request)
            if problem:
                from django.http import HttpResponseBadRequest

                return HttpResponseBadRequest(f"{problem}; remove it and try again\n", content_type="text/plain")
        return self.get_response(request)

    @staticmethod
    def problem(request) -> str:
        if "\x00" in request.path:
            return "the address holds a NUL character"
        forms = [("query", request.GET)]
        if request.method == "POST" and request.content_type in ("application/x-www-form-urlencoded",
                                                                 "multipart/form-data"):
            forms.append(("form", request.POST))
        for where, data in forms:
            for name, values in data.lists():
                if "\x00" in name or any("\x00" in value for value in values):
                    return f"the {where} field {name[:40]!r} holds a NUL character"
        return ""
