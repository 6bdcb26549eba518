"""The parents' API (/api/v1/): thin views over the read side's selectors (queries) and the
application layer's command handlers (commands). Only parent accounts get in; a parent sees and
changes only their own family, and anything else is "not found"."""
from __future__ import annotations

import re
import uuid

from django.contrib.auth import authenticate
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import permissions, status
from rest_framework.authtoken.models import Token
from rest_framework.exceptions import AuthenticationFailed, PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from ..application import children as child_commands
from ..application import conversations as conversation_commands
from ..application import parents as parent_commands
from ..application.accounts import parent_actor
from ..application.errors import ConsentRequired
from ..domain import Child
from ..eventstore import get_event_sourcing_service
from ..readside import selectors
from . import serializers as s

MIN_VERSION_HEADER = "X-Min-Version"
# No control characters in the stream id (a NUL cannot even reach the database's text).
_MIN_VERSION = re.compile(
    r"^(?P<stream>[a-z][a-z0-9_]{0,39}\.[^\s@\x00-\x1f\x7f]{1,200})@(?P<version>[1-9][0-9]{0,17})$")

MIN_VERSION_PARAMETER = OpenApiParameter(
    MIN_VERSION_HEADER, OpenApiTypes.STR, OpenApiParameter.HEADER, required=False,
    description="<stream id>@<version> (e.g. child.c-1@3): wait, bounded, until this read model has applied "
                "that version of that stream. A response that is still behind carries X-Read-Model-Stale: true.")


PAGE_PARAMETERS = [
    OpenApiParameter("cursor", OpenApiTypes.STR, OpenApiParameter.QUERY, required=False,
                     description="The position of a page, as given in the `next` and `previous` links."),
    OpenApiParameter("page_size", OpenApiTypes.INT, OpenApiParameter.QUERY, required=False,
                     description="Items per page, 1 to 100 (default 20)."),
]


class IsParentAccount(permissions.BasePermission):
    message = ("this API serves parent accounts only; staff and compliance accounts use the admin "
               "(/admin/)")

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        actor = parent_actor(request.user)
        if actor is None:
            raise PermissionDenied(self.message)
        request.parent_actor = actor
        return True


class Page(CursorPagination):
    """Keyset pages (stable while rows are added, no counts): follow `next`."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def get_page_size(self, request):
        asked = request.query_params.get(self.page_size_query_param)
        if asked is not None and not (asked.isascii() and asked.isdigit() and 1 <= int(asked) <= self.max_page_size):
            raise ValidationError({self.page_size_query_param: [f"give a whole number from 1 to {self.max_page_size}"]})
        return super().get_page_size(request)


class ParentView(APIView):
    permission_classes = [IsParentAccount]
    projector: str | None = None  # whose progress read-your-writes waits on

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)  # authenticated, a parent, not throttled: then the ids
        # An id in the URL is compared in the database, whose text cannot hold a NUL: no
        # resource has such an id, so it is not found (rather than the database's error, a 500).
        if any("\x00" in value for value in kwargs.values() if isinstance(value, str)):
            raise selectors.NotFound("not found: no resource has an id with a NUL character")

    @property
    def actor(self):
        return self.request.parent_actor

    @property
    def parent_id(self) -> str:
        return self.request.parent_actor.parent_id

    @staticmethod
    def query(serializer_class, request) -> dict:
        serializer = serializer_class(data=request.query_params)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    @staticmethod
    def body(serializer_class, request) -> dict:
        if not isinstance(request.data, dict):
            raise ValidationError({"non_field_errors": ["the body must be a JSON object"]})
        serializer = serializer_class(data=request.data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data

    def wait_for_writes(self, own_stream: str | None = None, min_version: int | None = None) -> None:
        """Read-your-writes: ?min_version= (the resource's own stream) or the X-Min-Version header."""
        header = self.request.headers.get(MIN_VERSION_HEADER)
        stream, version = None, None
        if header:
            match = _MIN_VERSION.match(header.strip())
            if match is None:
                raise ValidationError({MIN_VERSION_HEADER: ["give <stream id>@<version>, e.g. child.c-1@3"]})
            stream, version = match["stream"], int(match["version"])
        if min_version is not None and own_stream is not None:
            stream, version = own_stream, min_version
        if stream is not None and not selectors.stream_is_mine(self.parent_id, stream):
            stream = version = None  # another family's stream: no wait, and nothing said about it
        self.freshness = selectors.wait_for(self.projector, stream, version)

    def finalize_response(self, request, response, *args, **kwargs):
        """Every answer after a read-your-writes wait says how far the read model is, errors too
        (a 404 for a child registered a moment ago is "not yet", not "never")."""
        response = super().finalize_response(request, response, *args, **kwargs)
        freshness = getattr(self, "freshness", None)
        if freshness is not None and freshness.wanted is not None:
            response["X-Read-Model-Version"] = str(freshness.applied or 0)
            if freshness.stale:
                response["X-Read-Model-Stale"] = "true"
        return response

    @staticmethod
    def command_result(result, status_code=200) -> Response:
        return Response({"stream_id": result.stream_id, "version": result.version, "streams": result.streams},
                        status=status_code)


# --- auth -------------------------------------------------------------------------------

class TokenView(APIView):
    """Exchanges a parent's username (email) and password for their API token."""

    permission_classes = [permissions.AllowAny]
    authentication_classes: list = []
    throttle_scope = "auth"

    def get_authenticate_header(self, request):
        # A wrong password is 401, as documented. Without authenticators DRF has no challenge
        # for the WWW-Authenticate a 401 must carry and turns it into 403; the challenge is the
        # scheme the token is then used with.
        return "Token"

    @extend_schema(request=s.TokenRequestSerializer, responses={200: s.TokenSerializer}, tags=["auth"],
                   summary="Get your API token", auth=[])
    def post(self, request):
        data = ParentView.body(s.TokenRequestSerializer, request)
        user = authenticate(request=request, username=data["username"], password=data["password"])
        if user is None or not user.is_active:
            raise AuthenticationFailed("the username or password is wrong")
        if parent_actor(user) is None:
            raise PermissionDenied(IsParentAccount.message)
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})


# --- children ---------------------------------------------------------------------------

class ChildrenView(ParentView):
    projector = "dashboard"

    @extend_schema(parameters=[MIN_VERSION_PARAMETER], responses={200: s.FamilyChildSerializer(many=True)},
                   tags=["children"], summary="Your children, with consent state and open alerts")
    def get(self, request):
        self.wait_for_writes()
        rows = selectors.family_children(self.parent_id).order_by("registered_at", "child_id")
        return Response(selectors.present_family_children(list(rows[:500])))

    @extend_schema(request=s.RegisterChildSerializer, responses={201: s.CommandResultSerializer}, tags=["children"],
                   summary="Register a child (with your consent)")
    def post(self, request):
        data = self.body(s.RegisterChildSerializer, request)
        try:
            result = self._register(data)
        except ConsentRequired as exc:  # here a missing input, not a refusal
            raise ValidationError({"consent_method": [str(exc)]}) from None
        return self.command_result(result, status.HTTP_201_CREATED)

    def _register(self, data):
        return child_commands.register_child_with_consent(
            actor=self.actor, parent_id=self.parent_id, child_id=data.get("child_id") or f"c-{uuid.uuid4().hex[:12]}",
            name=data["name"], age=data["age"], consent_method=data.get("consent_method"),
            device_id=data.get("device_id"), udid=data.get("udid"))


class ChildDetailView(ParentView):
    projector = "profiles"

    @extend_schema(parameters=[s.ProfileQuerySerializer, MIN_VERSION_PARAMETER],
                   responses={200: s.ChildProfileSerializer}, tags=["children"],
                   summary="A child's profile (now, or as of a version or time)")
    def get(self, request, child_id: str):
        options = self.query(s.ProfileQuerySerializer, request)
        self.wait_for_writes(f"child.{child_id}", options.get("min_version"))
        if "version" in options or "as_of" in options:
            selectors.require_own_child(self.parent_id, child_id)
            child = get_event_sourcing_service().load_aggregate_sync(
                Child, child_id, version=options.get("version"), as_of=options.get("as_of"))
            return Response(selectors.profile_from_aggregate(child))
        return Response(selectors.child_profile(self.parent_id, child_id))

    @extend_schema(request=s.ProfileChangesSerializer, responses={200: s.CommandResultSerializer}, tags=["children"],
                   summary="Change a child's profile (name, age, interests, language)")
    def patch(self, request, child_id: str):
        changes = self.body(s.ProfileChangesSerializer, request)
        return self.command_result(child_commands.update_child_profile(actor=self.actor, child_id=child_id,
                                                                       changes=dict(changes)))


class DeviceView(ParentView):
    @extend_schema(request=s.PairDeviceSerializer, responses={200: s.CommandResultSerializer}, tags=["children"],
                   summary="Pair a teddy bear with the child")
    def post(self, request, child_id: str):
        data = self.body(s.PairDeviceSerializer, request)
        return self.command_result(child_commands.pair_device(actor=self.actor, child_id=child_id,
                                                              device_id=data["device_id"], udid=data["udid"]))

    @extend_schema(request=None, responses={200: s.CommandResultSerializer}, tags=["children"],
                   summary="Unpair the child's teddy bear")
    def delete(self, request, child_id: str):
        return self.command_result(child_commands.unpair_device(actor=self.actor, child_id=child_id))


class SafetySettingsView(ParentView):
    @extend_schema(request=s.SafetySettingsSerializer, responses={200: s.CommandResultSerializer}, tags=["children"],
                   summary="Set the content filter and the daily time limit")
    def put(self, request, child_id: str):
        data = self.body(s.SafetySettingsSerializer, request)
        return self.command_result(child_commands.change_safety_settings(
            actor=self.actor, child_id=child_id, content_filter_level=data["content_filter_level"],
            daily_time_limit_minutes=data["daily_time_limit_minutes"]))


class ConsentView(ParentView):
    @extend_schema(request=s.GrantConsentSerializer, responses={200: s.CommandResultSerializer}, tags=["consent"],
                   summary="Grant your verifiable consent for a child")
    def post(self, request, child_id: str):
        data = self.body(s.GrantConsentSerializer, request)
        return self.command_result(parent_commands.grant_consent(actor=self.actor, parent_id=self.parent_id,
                                                                 child_id=child_id, method=data["method"]))

    @extend_schema(request=None, responses={200: s.CommandResultSerializer}, tags=["consent"],
                   summary="Withdraw consent (the child is deactivated with it)")
    def delete(self, request, child_id: str):
        selectors.require_own_child(self.parent_id, child_id)
        return self.command_result(parent_commands.withdraw_consent(actor=self.actor, parent_id=self.parent_id,
                                                                    child_id=child_id))


# --- conversations ----------------------------------------------------------------------

class ConversationPage(Page):
    ordering = ("-started_at", "-id")


class ChildConversationsView(ParentView):
    projector = "conversations"

    @extend_schema(parameters=[s.PeriodQuerySerializer, MIN_VERSION_PARAMETER, *PAGE_PARAMETERS],
                   responses={200: s.ConversationPageSerializer}, tags=["conversations"],
                   summary="A child's conversations, newest first")
    def get(self, request, child_id: str):
        period = self.query(s.PeriodQuerySerializer, request)
        self.wait_for_writes()
        selectors.require_own_child(self.parent_id, child_id)
        paginator = ConversationPage()
        rows = paginator.paginate_queryset(selectors.conversations_of(child_id, period.get("since"),
                                                                      period.get("until")), request, view=self)
        return paginator.get_paginated_response(selectors.present_conversations(rows))


class TalkTimeView(ParentView):
    projector = "conversations"

    @extend_schema(parameters=[s.PeriodQuerySerializer], responses={200: s.TalkDaySerializer(many=True)},
                   tags=["conversations"], summary="Minutes a child talked per day (UTC), newest first")
    def get(self, request, child_id: str):
        period = self.query(s.PeriodQuerySerializer, request)
        selectors.require_own_child(self.parent_id, child_id)
        return Response(selectors.talk_minutes(child_id, period.get("since"), period.get("until"))[:366])


class ConversationDetailView(ParentView):
    projector = "conversations"

    @extend_schema(parameters=[s.ReadOptionsSerializer, MIN_VERSION_PARAMETER],
                   responses={200: s.ConversationSerializer}, tags=["conversations"], summary="One conversation")
    def get(self, request, conversation_id: str):
        options = self.query(s.ReadOptionsSerializer, request)
        self.wait_for_writes(f"conversation.{conversation_id}", options.get("min_version"))
        row = selectors.conversation_row(self.parent_id, conversation_id)
        return Response(selectors.present_conversations([row])[0])


# --- alerts and timeline ----------------------------------------------------------------

class AlertPage(Page):
    ordering = ("-raised_at", "-id")


class AlertsView(ParentView):
    projector = "alerts"

    @extend_schema(parameters=[s.AlertQuerySerializer, MIN_VERSION_PARAMETER, *PAGE_PARAMETERS],
                   responses={200: s.AlertPageSerializer}, tags=["alerts"],
                   summary="Safety alerts of your children, newest first")
    def get(self, request):
        options = self.query(s.AlertQuerySerializer, request)
        self.wait_for_writes()
        paginator = AlertPage()
        rows = paginator.paginate_queryset(selectors.alerts_of(self.parent_id, options.get("state")), request,
                                           view=self)
        return paginator.get_paginated_response([selectors.present_alert(r) for r in rows])


class AcknowledgeAlertView(ParentView):
    @extend_schema(request=None, responses={200: s.CommandResultSerializer}, tags=["alerts"],
                   summary="Acknowledge a safety alert")
    def post(self, request, alert_id: str):
        row = selectors.alert_row(self.parent_id, alert_id)
        return self.command_result(conversation_commands.acknowledge_safety_flag(
            actor=self.actor, conversation_id=row.conversation_id, flag_number=row.flag_number))


class TimelinePage(Page):
    ordering = ("-occurred_at", "-id")


class TimelineView(ParentView):
    projector = "timeline"

    @extend_schema(parameters=[s.ReadOptionsSerializer, MIN_VERSION_PARAMETER, *PAGE_PARAMETERS],
                   responses={200: s.TimelinePageSerializer}, tags=["children"],
                   summary="What happened to a child, newest first")
    def get(self, request, child_id: str):
        options = self.query(s.ReadOptionsSerializer, request)
        self.wait_for_writes(f"child.{child_id}", options.get("min_version"))
        selectors.require_own_child(self.parent_id, child_id)
        paginator = TimelinePage()
        rows = paginator.paginate_queryset(selectors.timeline_of(self.parent_id, child_id), request, view=self)
        return paginator.get_paginated_response([selectors.present_timeline(r) for r in rows])

