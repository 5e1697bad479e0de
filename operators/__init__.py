"""Airflow operators of phiflow: launch a stage, read its manifest, report lineage and counters."""
