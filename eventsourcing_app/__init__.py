"""The event-sourced core of the AI Teddy Bear platform.

`domain/` is pure Python (no Django); `eventstore/` is the store and its public API;
`kafka/` publishes and reads the Kafka copy; Django models are the mirror.
"""
