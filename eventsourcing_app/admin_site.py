"""The admin site of the audit trail (installed in place of django.contrib.admin's default)."""
from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.apps import AdminConfig
from django.http import JsonResponse


class AuditAdminSite(admin.AdminSite):
    site_header = "Teddy audit trail"
    site_title = "Teddy audit trail"
    index_title = "Streams, events, data subjects and the access log"

    def autocomplete_view(self, request):
        # No page here uses autocompletion; Django's would page audit tables with COUNT and OFFSET.
        return JsonResponse({"error": "the audit trail offers no autocompletion"}, status=404)


class AuditAdminConfig(AdminConfig):
    default_site = "eventsourcing_app.admin_site.AuditAdminSite"
