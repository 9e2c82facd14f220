"""Kafka edge: client settings (SASL/SSL), topic creation, producer and consumer construction."""
