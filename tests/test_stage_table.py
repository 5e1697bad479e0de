"""The stage table and `phiflow check`: both recipes close, and every kind of mistake a user makes is
one `field.path: reason` line, not a traceback."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from phiflow import stages
from phiflow.check import check_file, graph_text, load_error_lines, problems
from phiflow.cli import main
from phiflow.recipe import RecipeError, parse_recipe

ROOT = Path(__file__).resolve().parents[1]
DEMO, PHI4 = ROOT / "recipes" / "demo.yaml", ROOT / "recipes" / "phi4.yaml"


def lines_for(path: Path, mutate) -> list[str]:
    """The check lines of the recipe at `path` after `mutate(data)`, loaded as if from `path`."""
    data: dict[str, Any] = copy.deepcopy(yaml.safe_load(path.read_text()))
    mutate(data)
    try:
        recipe = parse_recipe(data, path)
    except RecipeError as e:
        return load_error_lines(e)
    return [str(p) for p in problems(recipe)]


@pytest.mark.parametrize("path", [DEMO, PHI4])
def test_both_recipes_close(path: Path, capsys) -> None:
    recipe, found = check_file(str(path))
    assert recipe is not None and found == []
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "the graph closes" in out
    for group in recipe.mixture.sources:  # every Table 5 group with its share
        assert f"{group.name}" in out and f"{group.share:.1%}" in out


def test_phi4_declares_the_whole_table5_mixture() -> None:
    recipe, _ = check_file(str(PHI4))
    made = {d for n in __import__("phiflow.check", fromlist=["nodes"]).nodes(recipe) for d in n.io.outputs}
    assert {"code.clean", "books.clean", "wiki.clean", "synthetic.web_rewrites", "synthetic.generated"} <= made
    kinds = {s.kind for s in recipe.sources.values()}
    assert kinds == {"commoncrawl", "wikipedia", "code", "documents"}
    assert len(recipe.stages.decontaminate.benchmarks) >= 10


def test_graph_text_names_every_stage_and_what_paths_resolve_against() -> None:
    recipe, _ = check_file(str(DEMO))
    text = graph_text(recipe)
    for name in recipe.sources:
        for st in stages.curation_chain(recipe, name):
            assert st.name in text
    assert "code_extract" in text and "documents_extract" in text and "code_repos" in text
    assert f"relative paths resolve against the recipe's folder {DEMO.parent}" in text
    assert f"../data/sample -> {ROOT / 'data' / 'sample'}" in text


def _set(path: list, value):
    def mutate(data: dict) -> None:
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


MUTATIONS = [
    # a mixture group reading a dataset no stage produces (a typo)
    (DEMO, _set(["mixture", "sources", 0, "datasets"], ["web.claen"]),
     "mixture.sources[0].datasets[0]: web.claen (mixture group web) is produced by no stage of any declared "
     "source; nearest produced: web.clean"),
    # a source removed while the mixture still reads it
    (PHI4, lambda d: d["sources"].pop("code"),
     "mixture.sources[3].datasets[0]: code.clean (mixture group code) is produced by no stage"),
    # an allowlist naming a stage that does not run for that source (wiki has no langid)
    (PHI4, _set(["stages", "decontaminate", "allowlist_references"], ["wiki.langid", "web.langid"]),
     "stages.decontaminate.allowlist_references[0]: wiki.langid (read by decontaminate of web) is produced by "
     "no stage of any declared source; nearest produced: wiki.clean, web.langid"),
    # a stage input that no stage writes
    (DEMO, _set(["stages", "dedup", "input"], "qualty"),
     "stages.dedup.input: web.qualty (read by dedup of web) is produced by no stage"),
    (DEMO, _set(["stages", "seed_select", "input_suffix"], "cleaned"),
     "stages.seed_select.input_suffix: web.cleaned (read by seed_select of web)"),
    # midtraining's long-context data
    (DEMO, _set(["training", "midtrain", "long_context"], [{"name": "novels", "datasets": ["novels.clean"],
                                                            "share": 0.5}]),
     "training.midtrain.long_context[0].datasets[0]: novels.clean (long-context group novels)"),
    # shares that do not sum to 1
    (DEMO, _set(["mixture", "sources", 0, "share"], 0.05), "mixture: shares sum to"),
    # epochs above max_epochs given the declared unique tokens
    (PHI4, _set(["mixture", "sources", 0, "max_epochs"], 0.5),
     "mixture.sources[0].share: web: 0.15 of 1e+13 tokens is 1.15 epochs of its 1.3e+12 unique tokens, "
     "above max_epochs 0.5"),
    # a benchmark file that is missing, with what its relative path resolved against
    (DEMO, _set(["stages", "decontaminate", "benchmarks", 0, "path"], "../data/benchmarks/nope.jsonl"),
     f"stages.decontaminate.benchmarks[0].path: arith: {ROOT / 'data' / 'benchmarks' / 'nope.jsonl'} does not "
     f"exist (relative to the recipe's folder {DEMO.parent})"),
    (PHI4, _set(["stages", "decontaminate", "benchmarks"], []),
     "stages.decontaminate.benchmarks: empty: decontamination would flag nothing"),
    # an LLM backend with no connection
    (PHI4, _set(["llm", "api_key_conn_id"], None), "llm.base_url: backend openai needs a server"),
    (PHI4, _set(["stages", "quality_annotate", "base_url"], None),
     "stages.quality_annotate.base_url: backend openai needs a server"),
    # a source path that does not exist, resolved against the recipe
    (DEMO, _set(["sources", "code", "collections", 0, "path"], "no-such-folder"),
     f"sources.code.collections[debian-12-code].path: {ROOT / 'data' / 'sample' / 'no-such-folder'} does not exist"),
    # quality overrides for a source that does not exist
    (DEMO, _set(["stages", "quality", "overrides"], {"novels": {"keep_fraction": 0.5}}),
     "stages.quality.overrides.novels: no such source"),
]


@pytest.mark.parametrize(("path", "mutate", "line"), MUTATIONS, ids=[m[2].split(":")[0] for m in MUTATIONS])
def test_each_mistake_is_its_line(path: Path, mutate, line: str) -> None:
    found = lines_for(path, mutate)
    assert any(f.startswith(line) or line in f for f in found), found


def test_check_exits_nonzero_with_the_lines(tmp_path: Path, capsys) -> None:
    data = yaml.safe_load(PHI4.read_text())
    data["mixture"]["sources"][3]["datasets"] = ["code.cleaned"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "mixture.sources[3].datasets[0]: code.cleaned" in err and "nearest produced: code.clean" in err


def test_an_allowlist_built_from_the_training_data_is_a_warning_not_a_failure(capsys) -> None:
    assert main(["check", str(DEMO)]) == 0  # the demo builds its allowlist from web.langid
    err = capsys.readouterr().err
    assert "warning: stages.decontaminate.allowlist_references: web.langid is training data" in err


def test_a_dag_file_whose_recipe_does_not_close_refuses_to_load(tmp_path: Path) -> None:
    """The import error the Airflow UI shows carries the check's lines."""
    data = yaml.safe_load(DEMO.read_text())
    data["mixture"]["sources"][1]["datasets"] = ["synthetic.generatd"]
    for src in data["sources"].values():  # the copy lives elsewhere: make its paths absolute
        src["base_url"] = str((DEMO.parent / src["base_url"]).resolve())
    for b in data["stages"]["decontaminate"]["benchmarks"]:
        b["path"] = str((DEMO.parent / b["path"]).resolve())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    env = {**os.environ, "PHIFLOW_RECIPE": str(bad)}
    for dag_file in ("phiflow_dags.py", "phiflow_training.py"):
        proc = subprocess.run([sys.executable, "-c", f"import runpy; runpy.run_path('dags/{dag_file}')"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0
        assert "does not close (phiflow check)" in proc.stderr
        assert "mixture.sources[1].datasets[0]: synthetic.generatd" in proc.stderr


def test_every_stage_file_exists_and_names_its_table_entry() -> None:
    for st in stages.STAGES:
        path = ROOT / st.job_file
        assert path.exists(), st
        if st.engine == "spark":
            assert f'STAGE = "{st.name}"' in path.read_text(), st


def test_stage_table_drives_each_kind_of_source() -> None:
    recipe, _ = check_file(str(DEMO))
    chains = {n: [s.name for s in stages.curation_chain(recipe, n)] for n in recipe.sources}
    assert chains["web"][:2] == ["commoncrawl_extract", "langid"]
    assert "langid" not in chains["wiki"] and "langid" not in chains["code"]
    assert chains["books"][:2] == ["documents_extract", "langid"]
    assert chains["code"][-1] == "code_repos"
    assert stages.io(recipe, "quality", "books").input == "books.langid"
    assert stages.io(recipe, "quality", "code").input == "code.extracted"
    assert set(stages.seed_sources(recipe)) == {"web", "code", "books"}


def test_asset_triggered_tokenize_with_a_stale_partition_does_not_look_up_a_wrong_stage(monkeypatch) -> None:
    """The training DAG's tokenize tasks: an asset-triggered run that finds a stale tokens partition
    runs it (the tokenizer-aware partitions_callable already chose it) instead of raising."""
    monkeypatch.setenv("PHIFLOW_RECIPE", str(DEMO))
    from operators.spark_stage import SparkStageOperator
    from operators.training import pending_tokenize

    op = SparkStageOperator(task_id="tokenize_web_clean", stage="tokenize", source="web.clean",
                            recipe_path=str(DEMO), partitions_callable=pending_tokenize("web.clean"))
    assert op.output_dataset == "tokens.web.clean" and op.application.endswith("spark_jobs/tokenization.py")

    class Run:
        run_type = "asset_triggered"

    assert op.unchanged_output({"dag_run": Run()}, {"snapshot": "CC-MAIN-2024-10"}) is False


def test_funnel_columns_are_the_main_outputs_of_the_curation_stages() -> None:
    recipe, _ = check_file(str(DEMO))
    for name in recipe.sources:
        for st in stages.curation_chain(recipe, name):
            if st.funnel:
                assert st.io(recipe, name).output == f"{name}.{st.funnel}", st.name


def test_code_is_graded_with_its_own_prompt_and_classifier() -> None:
    """phi4: text sources share edu-v1; code has code-edu-v1, trained on code annotations only, graded
    with the code prompt, and scored without the prose rules."""
    from phiflow.records.annotation_prompts import messages

    recipe, _ = check_file(str(PHI4))
    assert stages.classifier_families(recipe) == {"edu-v1": ["web", "wiki", "books"], "code-edu-v1": ["code"]}
    assert stages.io(recipe, "quality_train", "code").inputs == ("code.annotations",)
    assert stages.io(recipe, "quality_train", "books").inputs == ("web.annotations", "wiki.annotations",
                                                                  "books.annotations")
    assert [s.name for s in stages.curation_chain(recipe, "code")][:3] == ["code_extract", "quality_annotate",
                                                                           "quality_train"]
    code, text = messages("def f(): pass", ["stem"], "code"), messages("Some prose.", ["stem"])
    assert "learns to program" in code[0]["content"] and code[1]["content"].startswith("Source file:")
    assert "web documents" in text[0]["content"] and text[1]["content"].startswith("Document:")
    assert "Grade: <0-5>" in code[0]["content"] and "Grade: <0-5>" in text[0]["content"]  # one parser for both


def test_only_the_stages_that_call_the_llm_are_handed_its_connection(monkeypatch) -> None:
    """phi4 names an Airflow connection for its LLM: the synthesis and annotation jobs get it (through
    LLMConnectionHook, as AIRFLOW_CONN_<ID> in spark-submit's environment), no other stage does."""
    monkeypatch.setenv("PHIFLOW_RECIPE", str(PHI4))
    from operators.spark_stage import SparkStageOperator

    calls = {s.name for s in stages.STAGES if s.calls_llm}
    assert calls == {"quality_annotate", "synthesize"}
    for stage in ("synthesize", "quality_annotate", "quality", "dedup"):
        op = SparkStageOperator(task_id=stage, stage=stage, source="web", recipe_path=str(PHI4))
        assert op.llm_conn_id == ("phiflow_llm" if stage in calls else None), stage
