"""Pure: the change-event type, the Debezium decoder and the declarative table mappings.
No I/O here; everything is a function of its arguments."""
