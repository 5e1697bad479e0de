"""The DAG arguments every phiflow DAG takes from its recipe, so the DAG files only assemble tasks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from phiflow.recipe import Recipe


def dag_args(recipe: Recipe, kind: str, description: str) -> dict[str, Any]:
    """One run at a time, no catch-up (backfills are explicit), retries from the recipe's `airflow:`."""
    return {
        "description": f"{recipe.name}: {description}",
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["phiflow", recipe.name, kind],
        "default_args": {
            "retries": recipe.airflow.retries,
            "retry_delay": timedelta(seconds=recipe.airflow.retry_delay_s),
        },
    }
