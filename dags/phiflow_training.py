"""phiflow training DAG, assembled from the recipe's `tokenizer`, `mixture` and `training` sections.

Scheduled on the Assets of the datasets the mixture names: when they have all been updated, one run
tokenizes every committed input partition not tokenized yet (same partition digest: nothing to do),
mixes, stress-tests the warmup (when `training.stress` is set: a diverged point stops the run here),
pretrains (one task per phase of `training.pretrain.phases`, each loading the one before) and
midtrains. Each step commits a partition (tokens.*, blend, checkpoints.*). No stage logic here.
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from operators.dag_args import dag_args
from operators.spark_stage import SparkStageOperator, dataset_asset
from operators.training import (
    MegatronTrainOperator,
    MixOperator,
    StressTestOperator,
    TokenizerOperator,
    pending_tokenize,
)
from phiflow import settings, stages
from phiflow.check import require_closed
from phiflow.recipe import load_recipe

RECIPE_PATH = str(settings.default_recipe())
recipe = load_recipe(RECIPE_PATH)
require_closed(recipe)

if recipe.mixture is not None and recipe.training is not None:
    datasets = stages.training_datasets(recipe)
    with DAG(
        dag_id="phiflow_training",
        schedule=[dataset_asset(d) for d in datasets],
        **dag_args(recipe, "training", f"tokenize {', '.join(datasets)} -> mix -> pretrain -> midtrain"),
        doc_md=__doc__,
    ) as dag:
        tokenizer = TokenizerOperator(task_id="tokenizer", recipe_path=RECIPE_PATH)
        mix = MixOperator(task_id="mix", recipe_path=RECIPE_PATH, trigger_rule="none_failed")
        for dataset in datasets:
            (
                tokenizer
                >> SparkStageOperator(
                    task_id=f"tokenize_{dataset.replace('.', '_')}",
                    stage="tokenize",
                    source=dataset,
                    recipe_path=RECIPE_PATH,
                    partitions_callable=pending_tokenize(dataset),
                )
                >> mix
            )
        phases = [p.name for p in recipe.training.pretrain.phase_plan()] or [None]
        pretrain = [MegatronTrainOperator(task_id=f"pretrain_{p}" if p else "pretrain", run="pretrain", phase=p,
                                          recipe_path=RECIPE_PATH) for p in phases]
        midtrain = MegatronTrainOperator(task_id="midtrain", run="midtrain", recipe_path=RECIPE_PATH)
        stress = [StressTestOperator(task_id="stress", recipe_path=RECIPE_PATH)] if recipe.training.stress else []
        chain(mix, *stress, *pretrain, midtrain)
    globals()[dag.dag_id] = dag
