"""Operations around the stream: the connector, PostgreSQL preparation, DynamoDB tables,
snapshots and backfills, phases, verify and validate, and the sample workload."""
