"""The domain: events and aggregates in plain Python, with no Django or Kafka imports.

Importing this package defines (and so registers) every event class of the product.
"""
from .aggregate import EventSourcedAggregate, aggregate_classes
from .child import (
    ERASURE_REASONS,
    Child,
    ChildDataErased,
    ChildDeactivated,
    ChildProfileUpdated,
    ChildRegistered,
    ChildRegisteredV1,
    ChildRegisteredV2,
    DevicePaired,
    DeviceUnpaired,
    SafetySettingsChanged,
)
from .conversation import (
    Conversation,
    ConversationEnded,
    ConversationStarted,
    ConversationSummarized,
    MessageRecorded,
    SafetyFlagAcknowledged,
    SafetyFlagRaised,
)
from .errors import (
    AggregateDeactivated,
    AlreadyRegistered,
    ConsentError,
    ConversationAlreadyEnded,
    ConversationAlreadyStarted,
    ConversationNotEnded,
    ConversationNotStarted,
    DevicePairingError,
    InvalidAge,
    InvalidName,
    InvalidValue,
    NotRegistered,
    PersonalDataErased,
    UnknownField,
    UnknownProfileField,
    UnknownSettingField,
)
from .events import DomainError, DomainEvent, event_classes
from .ids import ActorId, ChildId, ConversationId, DeviceId, ParentId
from .parent import (
    CONSENT_METHODS,
    Parent,
    ParentalConsentGranted,
    ParentalConsentWithdrawn,
    ParentDeactivated,
    ParentRegistered,
    ParentSettingsUpdated,
)

__all__ = [
    # base
    "DomainEvent", "DomainError", "EventSourcedAggregate", "aggregate_classes", "event_classes",
    # ids
    "ParentId", "ChildId", "DeviceId", "ConversationId", "ActorId",
    # aggregates
    "Parent", "Child", "Conversation",
    # child events
    "ChildRegistered", "ChildRegisteredV1", "ChildRegisteredV2", "ChildProfileUpdated", "DevicePaired",
    "DeviceUnpaired", "SafetySettingsChanged", "ChildDeactivated", "ChildDataErased", "ERASURE_REASONS",
    # parent events
    "ParentRegistered", "ParentalConsentGranted", "ParentalConsentWithdrawn", "ParentSettingsUpdated",
    "ParentDeactivated", "CONSENT_METHODS",
    # conversation events
    "ConversationStarted", "MessageRecorded", "SafetyFlagRaised", "SafetyFlagAcknowledged", "ConversationEnded",
    "ConversationSummarized",
    # errors
    "InvalidValue", "InvalidName", "InvalidAge", "UnknownField", "UnknownProfileField", "UnknownSettingField",
    "AlreadyRegistered", "NotRegistered", "AggregateDeactivated", "PersonalDataErased", "DevicePairingError",
    "ConsentError", "ConversationNotStarted", "ConversationAlreadyStarted", "ConversationAlreadyEnded",
    "ConversationNotEnded",
]
