"""The Kafka copy of the event store: topics, the publisher, the outbox relay and a reader."""
