"""phiflow ablation DAGs: one `phiflow_ablation_<sweep>` per entry of the recipe's `sweeps:`.

Triggered manually. `points` lists the sweep's point references; a mapped task group per point mixes
its blend from the committed tokens (nothing re-tokenized), pretrains it (at most `max_active` at
once) and reads its held-out metrics; `report` (all_done) joins whatever points have a current
checkpoint into `ablations.<sweep>`. A failed point is cleared and rerun alone (its map index),
then the report again. No stage logic here: the points are phiflow.recipe.sweep_points, the report
training/sweep_report.py, the operators operators/sweep.py.
"""

from __future__ import annotations

from airflow.sdk import DAG, task, task_group

from operators.dag_args import dag_args
from operators.spark_stage import dataset_asset
from operators.sweep import AblationReportOperator, PointEvalOperator, PointMixOperator, PointTrainOperator
from phiflow import settings
from phiflow.recipe import load_recipe, sweep_point_ref, sweep_points

RECIPE_PATH = str(settings.default_recipe())
recipe = load_recipe(RECIPE_PATH)

for sweep in recipe.sweeps:
    with DAG(
        dag_id=f"phiflow_ablation_{sweep.name}",
        schedule=None,
        **dag_args(recipe, "ablation", f"ablation {sweep.name}: {sweep.description}"),
        doc_md=__doc__,
    ) as dag:

        @task(task_id="points")
        def points(name: str = sweep.name) -> list[str]:
            """The sweep's point references (validated: the recipe loads)."""
            r = load_recipe(RECIPE_PATH)
            return [sweep_point_ref(RECIPE_PATH, name, p.id) for p, _ in sweep_points(r, name)]

        @task_group(group_id="point")
        def point(recipe_path: str, max_active: int = sweep.max_active) -> None:
            (
                PointMixOperator(task_id="mix", recipe_path=recipe_path)
                >> PointTrainOperator(task_id="train", recipe_path=recipe_path, max_active_tis_per_dag=max_active)
                >> PointEvalOperator(task_id="evaluate", recipe_path=recipe_path)
            )

        point.expand(recipe_path=points()) >> AblationReportOperator(
            task_id="report",
            recipe_path=RECIPE_PATH,
            sweep=sweep.name,
            trigger_rule="all_done",
            outlets=[dataset_asset(f"ablations.{sweep.name}")],
        )
    globals()[dag.dag_id] = dag
