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
