"""Topic retention and cleanup, provisioned on new topics and corrected on existing ones.

Configurations are read back with kafka-python (its own protocol code, no librdkafka), never
inferred from what a topic still holds: the test broker (Tansu) stores topic configurations
and answers DescribeConfigs and IncrementalAlterConfigs, but applies neither retention nor
compaction, and has no AlterConfigs (the older, non-incremental call).
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from django.core.management import call_command
from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic

from eventsourcing_app.kafka.config import KafkaSettings
from eventsourcing_app.kafka.topics import check_topics, provision_topics
from tests.integration.conftest import REPO, database_url

DAY_MS = 86_400_000
EVENT_TOPIC_CONFIG = {"cleanup.policy": "delete", "retention.ms": str(365 * DAY_MS)}
SNAPSHOT_TOPIC_CONFIG = {"cleanup.policy": "compact,delete", "retention.ms": str(90 * DAY_MS),
                         "min.compaction.lag.ms": "60000", "delete.retention.ms": str(7 * DAY_MS)}


@pytest.fixture
def own_prefix(kafka_settings) -> KafkaSettings:
    """The session broker, with topics of this test only."""
    return kafka_settings.with_changes(topic_prefix=f"ret-{uuid.uuid4().hex[:8]}.", stream_types=("child", "parent"))


@pytest.fixture
def independent_admin(kafka_settings):
    admin = KafkaAdminClient(bootstrap_servers=kafka_settings.bootstrap_servers, client_id="retention-test")
    yield admin
    admin.close()


def configs_of(admin: KafkaAdminClient, topics) -> dict[str, dict[str, str]]:
    """Each topic's configuration as the broker reports it to kafka-python."""
    # "all": the broker may report its values as defaults (Tansu does), which "modified" leaves out.
    found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics], config_filter="all")
    return {topic: {name: entry["value"] for name, entry in entries.items()}
            for topic, entries in found["topic"].items()}


def policy(value: str) -> set[str]:
    return {part.strip() for part in value.split(",")}


def assert_configured(admin, settings: KafkaSettings, event_config=EVENT_TOPIC_CONFIG,
                      snapshot_config=SNAPSHOT_TOPIC_CONFIG) -> None:
    events, snapshots = list(settings.event_topics().values()), list(settings.snapshot_topics().values())
    found = configs_of(admin, events + snapshots)
    for topics, wanted in ((events, event_config), (snapshots, snapshot_config)):
        for topic in topics:
            got = found[topic]
            assert policy(got["cleanup.policy"]) == policy(wanted["cleanup.policy"]), (topic, got)
            for name, value in wanted.items():
                if name != "cleanup.policy":
                    assert got.get(name) == value, (topic, name, got)
    for topic in events:  # never compacted: that would keep only the last event of each stream
        assert "compact" not in policy(found[topic]["cleanup.policy"])


def test_new_topics_get_the_configured_retention_and_cleanup(own_prefix, independent_admin):
    first = provision_topics(own_prefix)
    assert {r.action for r in first} == {"created"} and len(first) == 4
    assert_configured(independent_admin, own_prefix)

    again = provision_topics(own_prefix)
    assert {r.action for r in again} == {"exists"}
    assert all(not r.changes and not r.detail for r in again)
    assert_configured(independent_admin, own_prefix)


def test_existing_topics_with_wrong_retention_are_corrected_and_the_change_reported(
        own_prefix, independent_admin, settings, capsys):
    event_topic, snapshot_topic = own_prefix.event_topic("child"), own_prefix.snapshot_topic("child")
    independent_admin.create_topics([
        NewTopic(event_topic, own_prefix.partitions, 1,
                 topic_configs={"cleanup.policy": "compact", "retention.ms": "604800000"}),
        NewTopic(snapshot_topic, own_prefix.partitions, 1, topic_configs={"cleanup.policy": "compact"}),
    ])
    assert configs_of(independent_admin, [event_topic])[event_topic]["retention.ms"] == "604800000"

    settings.KAFKA_TOPIC_PREFIX = own_prefix.topic_prefix
    settings.KAFKA_TOPIC_PARTITIONS = own_prefix.partitions
    settings.EVENTSTORE = {**settings.EVENTSTORE, "STREAM_TYPES": list(own_prefix.stream_types)}
    call_command("provision_topics")
    out = capsys.readouterr().out
    lines = {line.split()[1]: line for line in out.splitlines() if line.split() and line.split()[0] in
             ("created", "exists", "updated", "mismatch", "differs")}
    assert lines[event_topic].startswith(f"updated  {event_topic} ")
    assert "retention.ms 604800000 -> 31536000000" in lines[event_topic]
    assert "cleanup.policy compact -> delete" in lines[event_topic]
    assert lines[snapshot_topic].startswith(f"updated  {snapshot_topic} ")
    for change in ("cleanup.policy compact -> compact,delete", "retention.ms (not set) -> 7776000000",
                   "delete.retention.ms (not set) -> 604800000", "min.compaction.lag.ms (not set) -> 60000"):
        assert change in lines[snapshot_topic]
    assert lines[own_prefix.event_topic("parent")].startswith("created")
    assert_configured(independent_admin, own_prefix)

    call_command("provision_topics")  # nothing left to change
    out = capsys.readouterr().out
    assert out.count("exists") == 4 and "updated" not in out and "->" not in out


def test_overridden_retention_settings_are_applied_by_the_command(own_prefix, independent_admin):
    """KAFKA_EVENT_RETENTION_MS=-1 (for ever) and KAFKA_SNAPSHOT_RETENTION_MS from the
    environment, as an operator sets them; then back to the defaults on the same topics."""
    def run(**env):
        return subprocess.run(
            [sys.executable, "manage.py", "provision_topics"], cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, "DATABASE_URL": database_url(), "KAFKA_BOOTSTRAP_SERVERS": own_prefix.bootstrap_servers,
                 "KAFKA_TOPIC_PREFIX": own_prefix.topic_prefix, "KAFKA_TOPIC_PARTITIONS": str(own_prefix.partitions),
                 "EVENTSTORE_STREAM_TYPES": ",".join(own_prefix.stream_types), **env})

    done = run(KAFKA_EVENT_RETENTION_MS="-1", KAFKA_SNAPSHOT_RETENTION_MS=str(DAY_MS))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("created") == 4
    assert_configured(independent_admin, own_prefix, {**EVENT_TOPIC_CONFIG, "retention.ms": "-1"},
                      {**SNAPSHOT_TOPIC_CONFIG, "retention.ms": str(DAY_MS)})

    done = run(KAFKA_EVENT_RETENTION_MS="", KAFKA_SNAPSHOT_RETENTION_MS="")  # empty: the defaults
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("retention.ms -1 -> 31536000000") == 2
    assert done.stdout.count(f"retention.ms {DAY_MS} -> 7776000000") == 2
    assert_configured(independent_admin, own_prefix)
    assert "%3|" not in done.stderr and "FAIL" not in done.stderr


def test_the_publishers_topic_check_stays_quiet_and_never_changes_retention(own_prefix, independent_admin, caplog):
    provision_topics(own_prefix)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eventsourcing_app.kafka.topics"):
        check_topics(own_prefix)
    assert [r for r in caplog.records if r.name == "eventsourcing_app.kafka.topics"] == []

    changed = own_prefix.with_changes(event_retention_ms=30 * DAY_MS)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eventsourcing_app.kafka.topics"):
        check_topics(changed)  # a process started with other settings says so, and changes nothing
    messages = [r.getMessage() for r in caplog.records if r.name == "eventsourcing_app.kafka.topics"]
    assert len(messages) == 2 and all("retention.ms 31536000000 -> 2592000000" in m and "provision_topics" in m
                                      for m in messages)
    assert_configured(independent_admin, own_prefix)  # still the provisioned 365 days
    provision_topics(changed)  # the operator's command applies it
    assert_configured(independent_admin, own_prefix, {**EVENT_TOPIC_CONFIG, "retention.ms": str(30 * DAY_MS)})


def _unsupported(*args, **kwargs):
    raise KafkaException(KafkaError(KafkaError._UNSUPPORTED_FEATURE, "not supported by broker"))


def test_a_broker_that_allows_no_configuration_change_is_reported_not_fatal(
        own_prefix, independent_admin, monkeypatch, settings, capsys):
    """Neither IncrementalAlterConfigs nor AlterConfigs (as a locked-down managed cluster may
    answer): the topic stays as it is, the report says so, publishing is not refused."""
    event_topic = own_prefix.event_topic("child")
    independent_admin.create_topics([NewTopic(event_topic, own_prefix.partitions, 1,
                                              topic_configs={"cleanup.policy": "delete", "retention.ms": "604800000"})])
    monkeypatch.setattr(AdminClient, "incremental_alter_configs", _unsupported)
    monkeypatch.setattr(AdminClient, "alter_configs", _unsupported)

    reports = {r.topic: r for r in provision_topics(own_prefix)}
    assert reports[event_topic].action == "differs"
    assert "retention.ms 604800000 -> 31536000000" in str(reports[event_topic])
    assert "the broker does not allow changing topic configuration" in reports[event_topic].detail
    assert configs_of(independent_admin, [event_topic])[event_topic]["retention.ms"] == "604800000"
    check_topics(own_prefix)  # no exception: retention decides how long Kafka keeps records, not where they go

    settings.KAFKA_TOPIC_PREFIX = own_prefix.topic_prefix
    settings.KAFKA_TOPIC_PARTITIONS = own_prefix.partitions
    settings.EVENTSTORE = {**settings.EVENTSTORE, "STREAM_TYPES": list(own_prefix.stream_types)}
    call_command("provision_topics")  # exit 0, with a warning
    captured = capsys.readouterr()
    assert f"differs  {event_topic}" in captured.out
    assert "1 topic(s) keep a configuration other than the settings'" in captured.err


def test_a_broker_without_incremental_changes_gets_the_whole_configuration():
    """The fallback for brokers before IncrementalAlterConfigs: AlterConfigs replaces a topic's
    whole configuration, so it is sent the topic's own settings with the changes, and nothing
    the broker reports as a default (Tansu has no AlterConfigs: the call is captured here)."""
    from concurrent.futures import Future

    from confluent_kafka.admin import ConfigEntry, ConfigSource

    from eventsourcing_app.kafka.topics import ConfigChange, _alter_whole

    sent = []

    class Admin:
        def alter_configs(self, resources, **kwargs):
            futures = {}
            for resource in resources:
                sent.append((resource.name, dict(resource.set_config_dict)))
                futures[resource] = Future()
                futures[resource].set_result(None)
            return futures

    current = {
        "retention.ms": ConfigEntry("retention.ms", "1000", source=ConfigSource.DYNAMIC_TOPIC_CONFIG),
        "max.message.bytes": ConfigEntry("max.message.bytes", "2000000", source=ConfigSource.DYNAMIC_TOPIC_CONFIG),
        "segment.ms": ConfigEntry("segment.ms", "604800000", source=ConfigSource.DEFAULT_CONFIG, is_default=True),
        "sasl.secret": ConfigEntry("sasl.secret", None, source=ConfigSource.DYNAMIC_TOPIC_CONFIG, is_sensitive=True),
    }
    failure = _alter_whole(Admin(), "eventstore.child", (ConfigChange("retention.ms", "1000", "31536000000"),),
                           current, timeout=5)
    assert failure is None
    assert sent == [("eventstore.child", {"retention.ms": "31536000000", "max.message.bytes": "2000000"})]


def test_verify_integrity_counts_events_removed_by_retention_not_as_differences(store, monkeypatch, capsys):
    """Retention moves a partition's first offset past old records. Tansu neither applies
    retention nor deletes records on request, so the first offset is given here: the stream's
    first two events lie before it."""
    from eventsourcing_app.operations import verify
    from tests.events import notes

    stream_id = f"test.{uuid.uuid4().hex[:12]}"
    store.append_events_sync(stream_id, notes(3))
    assert store.flush(30)
    events = store.load_events_sync(stream_id)
    assert len({(e.kafka_position.topic, e.kafka_position.partition) for e in events}) == 1
    where = (events[0].kafka_position.topic, events[0].kafka_position.partition)
    real_log_starts = verify._log_starts
    monkeypatch.setattr(verify, "_log_starts", lambda settings, partitions: {
        **real_log_starts(settings, partitions), where: events[2].kafka_position.offset})

    report = verify.verify_integrity(stream_id, kafka_settings=store.kafka_settings)
    assert report.ok, report.problems
    assert (report.events, report.kafka_expired, report.kafka_checked) == (3, 2, 1)

    call_command("verify_integrity", stream_id)
    out = capsys.readouterr().out
    assert "1 events compared, 0 differ, 0 not yet published, 2 no longer in Kafka" in out
    assert "integrity verified" in out
