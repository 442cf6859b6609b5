"""The streaming pipeline: Kafka source and offsets, the guarded DynamoDB sink and its
clients, enrichment lookups, dead letters, the retry policy, and the loop that joins them."""
