"""Operators of the ablation DAGs: the training DAG's mix and train operators, one per sweep point.

A mapped task group hands each point's recipe reference (`<recipe>#sweep=..&point=..`, see
phiflow.recipe.sweep_points) to the operators inside it as a MappedArgument, which Airflow resolves only in
templated fields; MixOperator and MegatronTrainOperator keep `recipe_path` plain, so these subclasses
only make it templated. Everything else (blend, checkpoint folder, manifest, resume) is theirs.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from operators.lineage import input_dataset, manifest_lineage
from operators.training import MegatronTrainOperator, MixOperator, _ManifestLineage, airflow_run
from phiflow.manifest import Manifest
from phiflow.recipe import load_recipe
from phiflow.storage import Lake
from training import sweep_report
from training.evaluate import mc_evaluation


class PointMixOperator(MixOperator):
    """The blend of one sweep point (`blend/recipe=<recipe>_<sweep>_<point>`), from the shared tokens."""

    template_fields = ("recipe_path",)


class PointTrainOperator(MegatronTrainOperator):
    """The pretraining run of one sweep point (its own checkpoint folder and `checkpoints.pretrain` partition)."""

    template_fields = ("recipe_path",)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(run="pretrain", **kwargs)


class PointEvalOperator(BaseOperator):
    """A point's evaluation: the held-out metrics of its committed checkpoint manifest (overall and per
    source), and its scores on the recipe's multiple-choice benchmarks, committed as
    `evals.pretrain/recipe=<point>` (training.evaluate; nothing to do when already current)."""

    template_fields = ("recipe_path",)
    ui_color = "#e8f1fb"

    def __init__(self, *, recipe_path: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe_path = recipe_path
        self._evaluated: tuple[Manifest, Manifest | None] | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        recipe, lake = load_recipe(self.recipe_path), Lake()
        m = sweep_report.current_checkpoint(lake, recipe)
        if m is None:
            raise AirflowException(f"{recipe.name}: no current checkpoints.pretrain partition")
        out = {k: m.counters.get(k) for k in (*sweep_report.METRICS, "steps", "valid_by_source")}
        ev = mc_evaluation(recipe, lake, m, airflow_run(context))
        self._evaluated = (m, ev)
        if ev is not None:
            out["benchmarks"] = {k: v["accuracy"] for k, v in ev.counters["benchmarks"].items()}
        self.log.info("%s: %s", recipe.name, out)
        return {"recipe": recipe.name, "manifest": m.digest, **out}

    def get_openlineage_facets_on_complete(self, task_instance: Any):  # -> OperatorLineage
        """The committed evaluation (its inputs: the checkpoint and the benchmark files); without
        benchmarks, the checkpoint it read the held-out metrics from."""
        from airflow.providers.openlineage.extractors import OperatorLineage

        assert self._evaluated is not None  # called after a successful execute
        checkpoint, ev = self._evaluated
        if ev is not None:
            return manifest_lineage(Lake(), [ev])
        return OperatorLineage(inputs=[input_dataset(Lake(), checkpoint.input_ref())])


class AblationReportOperator(_ManifestLineage, BaseOperator):
    """Join the points into the committed `ablations.<sweep>` dataset (table, markdown, plot, best points);
    its lineage: the report partition, from the point (and base) checkpoints and evaluations it joined."""

    ui_color = "#eef7e8"

    def __init__(self, *, recipe_path: str, sweep: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.recipe_path, self.sweep = recipe_path, sweep
        self._committed = []

    def execute(self, context: Any) -> dict[str, Any]:
        m = sweep_report.commit_report(load_recipe(self.recipe_path), self.sweep, Lake(), airflow_run(context))
        self._committed = [m]
        return {"dataset": m.dataset, "partition": m.partition, "digest": m.digest, **m.counters}
