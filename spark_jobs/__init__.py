"""Spark entry points (`spark-submit spark_jobs/<stage>.py`) and the pure per-record logic they map.

Never imports Airflow: the jobs are launched by operators through spark-submit, and the per-record
modules (html_text, warc_records, langid_model) are plain functions over bytes, dicts and Arrow
batches that are unit-tested without Spark.
"""
