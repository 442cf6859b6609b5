"""The read path: the access patterns on both stores, routed by phase, and the HTTP API."""
