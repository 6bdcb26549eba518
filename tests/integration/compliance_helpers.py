"""A family whose child's profile changed several times, and staff users in each role."""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from eventsourcing_app.application import Actor, change_safety_settings, register_parent, update_child_profile
from eventsourcing_app.application.children import register_child_with_consent
from eventsourcing_app.models import Event
from eventsourcing_app.observability import event_context

PASSWORD = "a-long-compliance-password"


@dataclass
class Family:
    parent_id: str
    child_id: str
    child_name: str
    age_event: Event  # the profile update that changed the age
    age_correlation: str


def make_family(tag: str = "") -> Family:
    suffix = uuid.uuid4().hex[:8]
    parent_id, child_id = f"parent-{tag}{suffix}", f"child-{tag}{suffix}"
    name = f"Mila{suffix[:4]}"
    system = Actor.system("tests")
    register_parent(actor=system, parent_id=parent_id, email=f"{suffix}@example.com", name="Ana Parent")
    register_child_with_consent(actor=system, parent_id=parent_id, child_id=child_id, name=name, age=6,
                                consent_method="signed_form")
    update_child_profile(actor=system, child_id=child_id, changes={"interests": ["dinosaurs"]})
    correlation = f"req-age-{suffix}"
    with event_context(correlation_id=correlation):
        update_child_profile(actor=system, child_id=child_id, changes={"age": 7})
        change_safety_settings(actor=system, child_id=child_id, content_filter_level="moderate",
                               daily_time_limit_minutes=45)
    update_child_profile(actor=system, child_id=child_id, changes={"language": "de"})
    age_event = Event.objects.get(stream_id=f"child.{child_id}", correlation_id=correlation,
                                  event_type="ChildProfileUpdated")
    return Family(parent_id, child_id, name, age_event, correlation)


def staff_user(role: str | None, *, superuser: bool = False):
    """A staff user in the `compliance` or `privacy-officer` group (or none)."""
    username = f"{role or 'staff'}-{uuid.uuid4().hex[:6]}"
    model = get_user_model()
    if superuser:
        user = model.objects.create_superuser(username, password=PASSWORD)
    else:
        user = model.objects.create_user(username, password=PASSWORD, is_staff=True)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user
