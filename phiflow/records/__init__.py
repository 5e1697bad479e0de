"""Per-record logic: pure functions over Arrow batches, dicts and strings that the Spark stages
and the training stages call per partition. No engine (Spark, torch, Airflow) is imported here."""
