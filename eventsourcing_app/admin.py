"""The audit trail in the admin: streams and events, readable, never editable."""
from __future__ import annotations

import json

from django.contrib import admin
from django.utils.html import format_html

from .models import DeadLetter, Event, ProjectorState, Snapshot, Stream, SubjectKey


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Stream)
class StreamAdmin(ReadOnlyAdmin):
    list_display = ("stream_id", "stream_type", "version", "published_version", "created_at", "updated_at")
    list_filter = ("stream_type",)
    search_fields = ("stream_id",)
    show_full_result_count = False
    exclude = ("last_hash",)
    readonly_fields = ("stream_id", "stream_type", "version", "published_version", "created_at", "updated_at",
                       "last_hash_hex")

    @admin.display(description="last chain hash")
    def last_hash_hex(self, obj):
        return bytes(obj.last_hash).hex()


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("position", "stream_id", "version", "event_type", "occurred_at", "correlation_id", "actor",
                    "published")
    list_filter = ("event_type",)
    search_fields = ("=stream__stream_id", "=event_id", "=correlation_id", "=causation_id")
    show_full_result_count = False
    list_per_page = 100
    exclude = ("payload", "chain_hash")
    readonly_fields = ("position", "event_id", "stream", "version", "event_type", "schema_version", "occurred_at",
                       "correlation_id", "causation_id", "actor", "payload_json", "chain_hash_hex", "kafka_topic",
                       "kafka_partition", "kafka_offset", "published_at")

    @admin.display(boolean=True)
    def published(self, obj):
        return obj.published_at is not None

    @admin.display(description="payload")
    def payload_json(self, obj):
        try:
            text = json.dumps(json.loads(bytes(obj.payload)), indent=2, ensure_ascii=False)
        except ValueError:
            text = repr(bytes(obj.payload))
        return format_html("<pre>{}</pre>", text)

    @admin.display(description="chain hash")
    def chain_hash_hex(self, obj):
        return bytes(obj.chain_hash).hex()


@admin.register(Snapshot)
class SnapshotAdmin(ReadOnlyAdmin):
    list_display = ("stream_id", "version", "aggregate_type", "schema_version", "created_at", "kafka_offset")
    list_filter = ("aggregate_type",)
    search_fields = ("=stream__stream_id",)
    show_full_result_count = False
    exclude = ("state", "seal")  # personal fields are encrypted; decrypted state is not shown here


@admin.register(SubjectKey)
class SubjectKeyAdmin(ReadOnlyAdmin):
    """Which data subjects have keys and which were erased; never the keys themselves."""

    list_display = ("subject", "master_key_id", "created_at", "destroyed_at")
    search_fields = ("=subject",)
    list_filter = ("destroyed_at",)
    show_full_result_count = False
    exclude = ("wrapped_key",)


@admin.register(DeadLetter)
class DeadLetterAdmin(ReadOnlyAdmin):
    """Events a projector could not apply; their streams wait behind them until
    `manage.py projections retry-dead-letters` applies them."""

    list_display = ("projector", "stream_id", "version", "event_type", "attempts", "first_failed_at",
                    "last_failed_at", "resolved_at")
    list_filter = ("projector", "resolved_at")
    search_fields = ("=stream_id", "=event_id")
    show_full_result_count = False


@admin.register(ProjectorState)
class ProjectorStateAdmin(ReadOnlyAdmin):
    list_display = ("name", "active_generation", "building_generation", "switched_at")
