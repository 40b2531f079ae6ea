"""Kafka operations that ask the broker: topics, groups, lag, offsets, the failure log."""
