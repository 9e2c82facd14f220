"""Segment/RudderStack-compatible HTTP ingest: Tracking API requests in, input topics out."""
