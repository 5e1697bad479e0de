"""phiflow core: recipe, storage contract, manifests and schemas shared by every layer.

Nothing here imports Airflow, pyspark or torch at module level, so the core can be used from a
DAG file, a Spark executor or a training process alike.
"""

__version__ = "0.1.0"
