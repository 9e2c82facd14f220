"""streamscore: real-time lead scoring on Kafka and Redis."""

__version__ = "0.1.0"
