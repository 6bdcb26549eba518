"""One error body for every failure of the parents' API, and the schema that documents it.

    {"error": {"status": 404, "code": "not_found", "message": "you have no child c-1", "fields": null}}

`fields` holds per-field messages of a request that did not validate. The exception handler
maps the application's and the domain's errors to their statuses: a rule of the domain is 400,
a concurrency conflict 409, an erased child 410, a database that cannot be reached 503, and a
family that is not the caller's 404 (never 403: that would say it exists).
"""
from __future__ import annotations

import logging
import re

from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, JsonResponse
from drf_spectacular.openapi import AutoSchema
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ..application import errors as app_errors
from ..domain.events import DomainError
from ..eventstore.errors import (
    ConcurrencyError, EventStoreError, StoreUnavailableError, SubjectErasedError, TransientStoreError,
)
from ..eventstore.repository import AggregateNotFoundError
from ..readside.selectors import NotFound as ReadNotFound

logger = logging.getLogger(__name__)

ERROR_STATUSES = ("400", "401", "403", "404", "409", "410", "429", "503")


class ErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="A stable machine-readable code, e.g. not_found, invalid, conflict.")
    message = serializers.CharField(help_text="What went wrong and what to do, for a person.")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), allow_null=True,
                                   help_text="Per-field messages when the request body or query did not validate.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_body(status: int, code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"status": status, "code": code, "message": message, "fields": fields}}


def _flatten(detail, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            out.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    elif isinstance(detail, list):
        if all(not isinstance(item, (dict, list)) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                out.update(_flatten(item, f"{prefix}[{index}]"))
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def _response(status: int, code: str, message: str, fields=None, headers=None) -> Response:
    response = Response(error_body(status, code, message, fields), status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def exception_handler(exc, context):
    if isinstance(exc, ReadNotFound):
        return _response(404, "not_found", str(exc))
    if isinstance(exc, AggregateNotFoundError):  # a version or time of the caller's own child (checked first)
        return _response(404, "not_found", str(exc))
    if isinstance(exc, (app_errors.PermissionDenied, app_errors.NotFound, Http404)):
        return _response(404, "not_found", "not found: it does not exist or it is not one of your family's")
    if isinstance(exc, app_errors.ApplicationError):
        return _response(exc.http_status, _snake(type(exc).__name__), str(exc))
    if isinstance(exc, DomainError):
        return _response(400, _snake(type(exc).__name__), str(exc))
    if isinstance(exc, ConcurrencyError):
        return _response(409, "conflict", f"{exc}; read the current state and send the change again")
    if isinstance(exc, SubjectErasedError):
        return _response(410, "erased", "this child's personal data was erased; nothing more is stored about it")
    if isinstance(exc, (StoreUnavailableError, TransientStoreError)):
        return _response(503, "unavailable", f"{exc}; try again in a moment", headers={"Retry-After": "1"})
    if isinstance(exc, EventStoreError):
        return _response(400, _snake(type(exc).__name__), str(exc))
    if isinstance(exc, DjangoValidationError):  # a value the ORM refused, e.g. a forged page cursor
        return _response(400, "invalid", "a value in the request is not valid (a `cursor` must be one of the "
                         "`next`/`previous` links given)")
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first = next(iter(fields.items()))
        return _response(400, "invalid", f"the request is not valid: {first[0]}: {first[1][0]}", fields)
    if isinstance(exc, exceptions.APIException):
        response = drf_exception_handler(exc, context)
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else "error"
        headers = {name: value for name, value in (response.items() if response is not None else [])
                   if name in ("WWW-Authenticate", "Retry-After", "Allow")}
        return _response(exc.status_code, code, str(exc.detail), headers=headers)
    return None  # a bug: Django's 500 handler logs it


def json_not_found(request, exception=None):
    """404 for URLs no view matches, in the API's error shape under /api/ (the admin keeps its page)."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(404, "not_found", f"there is no API endpoint at {request.path}; see /api/docs/"),
                            status=404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def json_server_error(request):
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(500, "server_error", "the server failed on this request; it is logged, "
                                       "with the X-Correlation-ID of the response"), status=500)
    from django.views.defaults import server_error

    return server_error(request)


class TeddyAutoSchema(AutoSchema):
    """Every operation documents the error body for each status it can answer with."""

    def _get_response_bodies(self, direction="response"):
        bodies = super()._get_response_bodies(direction)
        if direction == "response":
            for status in ERROR_STATUSES:
                if status not in bodies:
                    bodies[status] = self._get_response_for_code(ErrorSerializer, status, direction=direction)
        return bodies
