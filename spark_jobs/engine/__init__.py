"""The Spark plumbing the stage entry points share: reading inputs, committing partitions, shards,
rejected rows, LLM calls from executors. Per-record logic lives in phiflow/records/."""
