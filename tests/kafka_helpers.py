"""Reading what is really in the topics, for assertions."""
from __future__ import annotations

from collections import defaultdict

from confluent_kafka.admin import AdminClient

from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.kafka.reader import scan_topic, stored_event_from_message


def topic_records(settings: KafkaSettings, stream_type: str) -> list:
    """Every record of a stream type's topic, as StoredEvents, in offset order within each partition."""
    topic = settings.event_topic(stream_type)
    meta = AdminClient(settings.admin_config()).list_topics(topic, timeout=10).topics[topic]
    messages = scan_topic(settings, topic, {partition: 0 for partition in meta.partitions})
    return [stored_event_from_message(m) for m in messages]


def records_by_stream(settings: KafkaSettings, stream_type: str, stream_ids) -> dict[str, list]:
    wanted = set(stream_ids)
    grouped: dict[str, list] = defaultdict(list)
    for record in topic_records(settings, stream_type):
        if record.metadata.stream_id in wanted:
            grouped[record.metadata.stream_id].append(record)
    return grouped
