"""seed_select and synthesize as Spark stages on the sample crawl, the LLM being the scripted HTTP
test server: lineage from a synthetic sample back to its web page, one dataset per workflow output,
counters, cached reruns."""

from __future__ import annotations

import pytest
from llm_server import LLMTestServer

from phiflow.recipe import parse_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, langid, seed_select, synthesize
from spark_jobs.engine.stage_io import StageContext

pytestmark = pytest.mark.spark
SNAP = {"snapshot": "CC-MAIN-2024-10"}
OUT = {"source": "web", **SNAP}


def answer(body: dict, i: int) -> str:
    msg = body["messages"][-1]["content"]
    if msg.startswith("INSTR:"):
        return "Reproduce this code."
    if msg.startswith("CODE:"):
        return "```python\nprint('unrelated')\n```"  # never matches: every reversal is rejected
    if msg.startswith("LQ:"):
        return "What do the two documents share?"
    if msg.startswith("LA:"):  # 3 of 5 votes agree and cite both documents
        return "Both teach Python.\nSources: 1, 2" if i < 3 else f"Nothing {i}.\nSources: 1"
    return f"sample {body['seed']} {i}"


def recipe_with(test_recipe, base_url: str):
    data = test_recipe.model_dump(mode="json")
    data["llm"] = {"backend": "openai", "model": "scripted", "base_url": base_url, "max_concurrency": 4,
                   "backoff_s": 0.01}
    data["stages"]["seed_select"]["input_suffix"] = "langid"  # seeds straight from langid: no curation needed here
    data["stages"]["synthesize"] = {"workflows": [
        {"name": "exercises", "kind": "rewrite", "max_seeds": 5, "samples_per_seed": 2, "output": "web_rewrites",
         "prompts": {"rewrite": "Turn into an exercise: {seed}"}},
        {"name": "long_qa", "kind": "long_context_qa", "max_seeds": 5, "group_size": 2,
         "prompts": {"question": "LQ: {documents}", "answer": "LA: {documents}\n{question}"}},
        {"name": "code_reversed", "kind": "instruction_reversal", "seed_kinds": ["code"], "max_seeds": 3,
         "match": "ast", "output": "code_instructions",
         "prompts": {"instruction": "INSTR: {code}", "code": "CODE: {instruction}"}},
    ]}
    return parse_recipe(data, test_recipe.path)


def test_seeds_then_synthesis_with_lineage_counters_and_cached_rerun(spark, test_recipe, tmp_path) -> None:
    lake = Lake(str(tmp_path / "lake"))
    with LLMTestServer(answer=answer) as srv:
        recipe = recipe_with(test_recipe, srv.base_url)
        ctx = StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake)
        commoncrawl_extract.run(spark, ctx)
        pages = langid.run(spark, ctx)
        seeds_m = seed_select.run(spark, ctx)
        assert seeds_m.dataset == "synthetic.seeds" and seeds_m.partition == OUT
        assert seeds_m.inputs[0].digest == pages.digest and seeds_m.row_count > 0
        assert seeds_m.counters["seed_kinds"].get("code", 0) >= 3  # docs.python.org code blocks
        seeds = lake.read_table(seeds_m).to_pylist()
        page_ids = set(lake.read_table(pages, columns=["doc_id"]).column("doc_id").to_pylist())
        assert all(s["parent_ids"][0] in page_ids and 0 <= s["passage_score"] <= 1 for s in seeds)

        first = synthesize.run(spark, ctx)  # one LLM pass, one partition per workflow output
        assert list(first) == ["synthetic.code_instructions", "synthetic.generated", "synthetic.web_rewrites"]
        assert all(m.partition == OUT for m in first.values())
        c = first["synthetic.web_rewrites"].counters
        assert c["kept_by_workflow"] == {"exercises": 10} and c["dropped"] == {}
        assert c["generated"] == 10 and c["llm_requests"] == 10 and c["llm_cache_hits"] == 0
        c = first["synthetic.generated"].counters  # 5 seeds: 2 pairs and a seed alone
        assert c["kept_by_workflow"] == {"long_qa": 2} and c["dropped"] == {"qa_group_too_small": 1}
        assert c["generated"] == 3 and c["llm_requests"] == 4
        empty = first["synthetic.code_instructions"]  # committed all the same: its consumers are scheduled on it
        assert empty.row_count == 0 and lake.read_table(empty).num_rows == 0
        assert empty.counters["dropped"] == {"reversal_mismatch": 3} and empty.counters["llm_requests"] == 6
        by_id = {s["doc_id"]: s for s in seeds}
        for r in lake.read_table(first["synthetic.web_rewrites"]).to_pylist():  # synthetic sample -> seed -> page
            seed = by_id[r["parent_ids"][0]]
            assert seed["parent_ids"][0] in page_ids and r["source_uri"] == seed["source_uri"]
            assert r["model"] == "scripted" and r["workflow"] == "exercises" and r["round"] == 1
        long_rows = lake.read_table(first["synthetic.generated"]).to_pylist()
        for r in long_rows:  # the whole context of both seeds is the sample
            assert r["workflow"] == "long_qa" and len(r["parent_ids"]) == 2
            assert all(by_id[p]["text"].strip() in r["text"] for p in r["parent_ids"])
        assert len({p for r in long_rows for p in r["parent_ids"]}) == 4
        served = sum(srv.served.values())

        again = synthesize.run(spark, ctx)
        assert sum(srv.served.values()) == served  # nothing paid twice
        for dataset, m in again.items():
            assert m.counters["llm_cache_hits"] == m.counters["llm_requests"] == first[dataset].counters["llm_requests"]
            assert m.content_digest == first[dataset].content_digest and m.attempt != first[dataset].attempt
