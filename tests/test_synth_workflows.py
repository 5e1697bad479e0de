"""Each synthesis workflow's logic, through the real HTTP test server with scripted answers."""

from __future__ import annotations

import json
import random

import pytest
from llm_server import LLMTestServer

from phiflow.llm import LLMConfig
from phiflow.recipe import RecipeError, SandboxParams, SynthesizeParams, SynthWorkflow, parse_recipe
from phiflow.records.synth_workflows import (
    ast_fingerprint,
    final_answer,
    grounding,
    plurality,
    seed_groups,
    split_sources,
    synthesize_seeds,
)
from spark_jobs.engine.llm_clients import make_client

# Generous: under `make test` the sandboxed runs share 2 cores with Spark and JVMs (a run timed out at
# wall_s 5 once); the limits themselves are tested in tests/test_sandbox.py.
SANDBOX = SandboxParams(cpu_s=10, wall_s=60, memory_mb=256)
ADD = "def add(a, b):\n    return a + b\n\nprint(add(2, 3))"
MUL = "def mul(a, b):\n    return a * b\n\nprint(mul(2, 3))"
SEEDS = [
    {"doc_id": "s1", "source_uri": "https://docs.python.org/a", "text": "Lists are mutable sequences."},
    {"doc_id": "s2", "source_uri": "https://docs.python.org/b", "text": "Dicts map keys to values."},
]
CODE_SEEDS = [
    {"doc_id": "c1", "source_uri": "https://docs.python.org/c", "text": ADD},
    {"doc_id": "c2", "source_uri": "https://docs.python.org/d", "text": MUL},
]


def script(body: dict, i: int) -> str:
    """The scripted model: answers keyed on the prompt's tag."""
    msg = body["messages"][-1]["content"]
    tag, _, rest = msg.partition(":")
    if tag == "REWRITE":
        return f"exercise({rest.strip()}) seed={body['seed']}"
    if tag == "DRAFT":
        return "draft v0"
    if tag == "CRITIQUE":
        return "NO CHANGES needed" if "draft v1" in rest else "add an example"
    if tag == "REVISE":
        return "draft v1"
    if tag.startswith("TURN"):
        return f"{body['messages'][0]['content']} says turn {rest.count('says turn')}"
    if tag == "INSTR":
        return "Write a function that adds two numbers." if "add" in rest else "Write a function that multiplies."
    if tag == "CODE":  # equivalent code, other names, for add; unrelated code for multiply
        return "```python\ndef plus(x, y):\n    return x + y\n\nprint(plus(2, 3))\n```" if "adds" in rest \
            else "```python\nimport math\nprint(math.pi)\n```"
    if tag == "Q":
        return f"Q[{rest.strip()[:5]}]"
    if tag == "A":  # Lists: everyone agrees; Dicts: 3 of 5 say 7
        return "The answer is 42." if "Lists" in rest else ["so 7", "so 7", "so 8", "so 7", "so 9"][i % 5]
    if tag == "LQ":
        return "Which city links document 1 and document 3?\nSources: 1, 3"
    if tag == "LA":  # the case is the first document's topic: 3 of 5 votes say Paris, cited as the case has it
        case = rest.split("Document 1:\n", 1)[1].split()[0]
        if case == "split":  # five answers, five cities: no plurality
            return ["Paris", "Rome", "Oslo", "Lima", "Kyiv"][i % 5] + "\nSources: 1, 3"
        return [LONG_CASES[case], LONG_CASES[case], "Rome\nSources: 2, 4", LONG_CASES[case], "Oslo"][i % 5]
    return "?"


LONG_CASES = {  # the voted answer each case's model gives
    "grounded": "It is Paris.\nSources: 1, 3", "single": "It is Paris.\nSources: 3",
    "unsourced": "It is Paris.", "adjacent": "It is Paris.\n**Sources:** 2, 3",
}


def long_seeds(case: str, n: int = 4) -> list[dict]:
    """n seeds of n different pages; the first document names the case."""
    return [{"doc_id": f"{case}{k}", "parent_ids": [f"page{k}"], "source_uri": f"https://example.org/{k}",
             "text": f"{case} passage {k}: fact {k}."} for k in range(n)]


def long_qa(**kw) -> SynthWorkflow:
    return wf(name="long_qa", kind="long_context_qa", votes=5,
              prompts={"question": "LQ: {documents}", "answer": "LA: {documents}\nQ: {question}"}, **kw)


@pytest.fixture
def client(tmp_path):
    with LLMTestServer(answer=script) as srv:
        cfg = LLMConfig(backend="openai", model="scripted", base_url=srv.base_url,
                        cache_dir=str(tmp_path / "cache"), max_concurrency=4, backoff_s=0.01)
        yield make_client(cfg), srv


def wf(**kw) -> SynthWorkflow:
    return SynthWorkflow(**{"temperature": 0.7, "max_tokens": 64, **kw})


def by_seed(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["parent_ids"][0], []).append(r)
    return out


def test_rewrite_samples_carry_lineage_and_distinct_seeds(client) -> None:
    c, srv = client
    w = wf(name="exercises", kind="rewrite", prompts={"rewrite": "REWRITE: {seed}"}, samples_per_seed=2)
    rows = synthesize_seeds(SEEDS, w, c, base_seed=0, sandbox=SANDBOX)
    assert len(rows) == 4 and len({r["doc_id"] for r in rows}) == 4
    assert all(r["drop_reason"] is None and r["model"] == "scripted" and r["workflow"] == "exercises" for r in rows)
    assert {r["parent_ids"][0] for r in rows} == {"s1", "s2"}
    s1 = by_seed(rows)["s1"]
    assert all(r["text"].startswith("exercise(Lists are mutable") for r in s1)
    assert s1[0]["text"] != s1[1]["text"]  # samples of one seed are sampled with different seeds
    again = synthesize_seeds(SEEDS, w, c, base_seed=0, sandbox=SANDBOX)
    assert again == rows and len(srv.bodies) == 4  # deterministic, and the rerun came from the cache


def test_output_cut_at_max_tokens_is_dropped_as_truncated(client) -> None:
    c, srv = client
    srv.inject("REWRITE: Dicts", "length")  # the model ran out of max_tokens on this seed's sample
    w = wf(name="exercises", kind="rewrite", prompts={"rewrite": "REWRITE: {seed}"})
    got = {r["parent_ids"][0]: r["drop_reason"] for r in synthesize_seeds(SEEDS, w, c, base_seed=0, sandbox=SANDBOX)}
    assert got == {"s1": None, "s2": "truncated_output"}
    srv.inject("REWRITE: Dicts", "length")
    lenient = wf(name="exercises_lenient", kind="rewrite", prompts={"rewrite": "REWRITE: {seed}"}, drop_truncated=False)
    rows = synthesize_seeds(SEEDS, lenient, c, base_seed=1, sandbox=SANDBOX)
    assert [r["drop_reason"] for r in rows] == [None, None]  # the recipe's choice, per workflow


def test_self_revision_stops_when_the_critic_accepts_and_keeps_history(client) -> None:
    c, _ = client
    w = wf(name="revised", kind="self_revision", rounds=3, rubric="accuracy",
           prompts={"draft": "DRAFT: {seed}", "critique": "CRITIQUE: [{rubric}] {draft}",
                    "revise": "REVISE: {draft} | {critique}"})
    rows = synthesize_seeds(SEEDS[:1], w, c, base_seed=0, sandbox=SANDBOX)
    [r] = rows
    assert r["text"] == "draft v1" and r["round"] == 1 and r["drop_reason"] is None
    steps = [(h["name"], h["role"]) for h in r["history"]]
    assert [n for n, role in steps if role == "assistant"] == ["draft", "critique", "revise", "critique"]
    assert "[accuracy] draft v0" in r["history"][2]["content"]  # the rubric reached the critic
    assert "add an example" in r["history"][4]["content"]  # the critique reached the reviser


def test_multi_agent_roles_take_turns_over_a_shared_transcript(client) -> None:
    c, srv = client
    w = wf(name="dialogue", kind="multi_agent", rounds=2, prompts={"turn": "TURN {role}: {seed}\n{transcript}"},
           roles=[{"name": "teacher", "system": "T"}, {"name": "student", "system": "S"}])
    [r] = synthesize_seeds(SEEDS[:1], w, c, base_seed=0, sandbox=SANDBOX)
    lines = r["text"].split("\n\n")
    assert [ln.split(":")[0] for ln in lines] == ["teacher", "student", "teacher", "student"]
    assert lines[0] == "teacher: T says turn 0" and lines[3] == "student: S says turn 3"
    assert r["round"] == 2 and [b["messages"][0]["content"] for b in srv.bodies] == ["T", "S", "T", "S"]


@pytest.mark.parametrize("match", ["ast", "similarity", "tests"])
def test_instruction_reversal_keeps_only_matching_pairs(client, match: str) -> None:
    c, _ = client
    w = wf(name="reversed", kind="instruction_reversal", seed_kinds=["code"], match=match, min_similarity=0.5,
           prompts={"instruction": "INSTR: {code}", "code": "CODE: {instruction}"})
    rows = by_seed(synthesize_seeds(CODE_SEEDS, w, c, base_seed=0, sandbox=SANDBOX))
    [add], [mul] = rows["c1"], rows["c2"]
    assert add["drop_reason"] is None and add["text"].startswith("Write a function that adds")
    assert "def plus(x, y)" in add["text"] and json.loads(add["meta"])["match"] == match
    assert mul["drop_reason"] == "reversal_mismatch"


def test_plurality_vote_drops_unanimous_and_keeps_the_plurality_reference(client) -> None:
    c, srv = client
    w = wf(name="qa", kind="plurality_vote", votes=5, prompts={"question": "Q: {seed}", "answer": "A: {question}"})
    rows = by_seed(synthesize_seeds(SEEDS, w, c, base_seed=0, sandbox=SANDBOX))
    [easy], [good] = rows["s1"], rows["s2"]
    assert easy["drop_reason"] == "vote_unanimous"
    meta = json.loads(good["meta"])
    assert good["drop_reason"] is None and meta["votes"] == {"7": 3, "8": 1, "9": 1} and meta["reference"] == "so 7"
    assert good["text"] == "Q[Dicts]\n\nso 7"
    assert [b["n"] for b in srv.bodies if b["messages"][-1]["content"].startswith("A:")] == [5, 5]


def test_plurality_rules() -> None:
    assert plurality(["1", "2", "3"])[1] == "vote_no_plurality"
    assert plurality(["1", "1", "2", "2", "3"])[1] == "vote_no_plurality"  # a tie is no plurality
    assert plurality(["x = 4", "4.0", "so 4", "5"]) == ("x = 4", None, {"4": 3, "5": 1})
    assert final_answer("Hence: Paris.\n") == "hence paris" and final_answer("1,000") == "1000"


def test_execution_validation_drops_code_that_fails() -> None:
    seeds = [{"doc_id": "ok", "source_uri": "u", "text": "print(1)"},
             {"doc_id": "bad", "source_uri": "u", "text": "import os\nos.fork()"}]
    w = wf(name="runs", kind="rewrite", execute=True, prompts={"rewrite": "{seed}"})
    rows = synthesize_seeds(seeds, w, _Echo(), base_seed=0, sandbox=SANDBOX)
    got = {r["parent_ids"][0]: r["drop_reason"] for r in rows}
    assert got == {"ok": None, "bad": "execution_failed"}


class _Echo:
    """A client whose answer is the prompt itself (code in, same code out)."""

    model = "echo"

    def chat(self, reqs):
        from phiflow.llm import ChatResult

        return [ChatResult(texts=[r.messages[-1]["content"]] * r.n, model="echo") for r in reqs]


def test_ast_fingerprint_ignores_names_and_docstrings() -> None:
    renamed = 'def plus(x, y):\n    """Sum."""\n    return x + y\n\nprint(plus(2, 3))'
    assert ast_fingerprint(ADD) == ast_fingerprint(renamed)
    assert ast_fingerprint(ADD) != ast_fingerprint(MUL) and ast_fingerprint("def (") is None


def test_long_context_qa_keeps_a_grounded_answer_over_the_whole_group(client) -> None:
    c, srv = client
    seeds = long_seeds("grounded", 5)  # group_size 4: one group of four, a trailing seed alone
    rows = synthesize_seeds(seeds, long_qa(), c, base_seed=0, sandbox=SANDBOX)
    kept, alone = rows
    assert kept["drop_reason"] is None and kept["parent_ids"] == ["grounded0", "grounded1", "grounded2", "grounded3"]
    assert kept["text"].startswith("Document 1:\ngrounded passage 0: fact 0.\n\nDocument 2:\ngrounded passage 1")
    assert "Document 4:\ngrounded passage 3: fact 3." in kept["text"]
    assert kept["text"].endswith("Question: Which city links document 1 and document 3?\nSources: 1, 3\n\n"
                                 "Answer: It is Paris.\nSources: 1, 3")
    meta = json.loads(kept["meta"])
    assert meta["sources"] == [1, 3] and meta["votes"] == {"it is paris": 3, "rome": 1, "oslo": 1}
    assert alone["parent_ids"] == ["grounded4"] and alone["drop_reason"] == "qa_group_too_small"
    assert [(b["messages"][-1]["content"][:3], b["n"]) for b in srv.bodies] == [("LQ:", 1), ("LA:", 5)]


@pytest.mark.parametrize(("case", "reason"), [
    ("single", "qa_single_source"), ("unsourced", "qa_not_grounded"), ("adjacent", "qa_sources_adjacent"),
    ("split", "vote_no_plurality"),
])
def test_long_context_qa_drops_answers_not_drawn_from_far_apart_documents(client, case: str, reason: str) -> None:
    c, _ = client
    [row] = synthesize_seeds(long_seeds(case), long_qa(), c, base_seed=0, sandbox=SANDBOX)
    assert row["drop_reason"] == reason and len(row["parent_ids"]) == 4


def test_grounding_rules() -> None:
    assert split_sources("Paris.\nSources: 1, 3\n") == ("Paris.", {1, 3})
    assert split_sources("Source documents: 2 and 4") == ("", {2, 4}) and split_sources("Paris 3")[1] is None
    assert grounding({1, 3}, 4) is None and grounding({1, 2, 3}, 4) is None
    assert grounding({1, 2}, 2) is None  # two documents: the only pair there is
    assert grounding({1, 2}, 4) == "qa_sources_adjacent" and grounding({4}, 4) == "qa_single_source"
    assert grounding(None, 4) == grounding(set(), 4) == grounding({1, 5}, 4) == "qa_not_grounded"


def test_long_context_groups_are_deterministic_and_mix_pages() -> None:
    pages = {"a1": "A", "a2": "A", "a3": "A", "b1": "B", "b2": "B", "c1": "C", "d1": "D", "d2": "D"}
    seeds = [{"doc_id": d, "parent_ids": [p]} for d, p in pages.items()]
    w = long_qa(group_size=3)
    expected = [["a1", "b1", "c1"], ["d1", "a2", "b2"], ["d2", "a3"]]  # each page's 1st seed, then 2nd, 3rd
    for k in range(5):
        random.Random(k).shuffle(seeds)
        assert [[s["doc_id"] for s in g] for g in seed_groups(seeds, w)] == expected
    singles = seed_groups(seeds, wf(name="one", kind="rewrite", prompts={"rewrite": "{seed}"}))
    assert [[s["doc_id"] for s in g] for g in singles] == [[d] for d in sorted(pages)]


def test_outputs_route_workflows_to_their_datasets() -> None:
    params = SynthesizeParams(workflows=[
        wf(name="web_rewrite", kind="rewrite", output="web_rewrites", prompts={"rewrite": "{seed}"}),
        long_qa(), wf(name="qa", kind="plurality_vote", prompts={"question": "{seed}", "answer": "{question}"}),
    ])
    assert params.outputs == {"synthetic.generated": ["long_qa", "qa"], "synthetic.web_rewrites": ["web_rewrite"]}
    assert params.output_datasets == ["synthetic.generated", "synthetic.web_rewrites"]


@pytest.mark.parametrize(("change", "error"), [
    ({"output": "Web-Rewrites"}, "output"), ({"group_size": 1}, "group_size"),
    ({"prompts": {"question": "q"}}, "answer"),
])
def test_long_context_qa_recipe_errors(test_recipe, change: dict, error: str) -> None:
    data = test_recipe.model_dump(mode="json")
    workflow = {"name": "long_qa", "kind": "long_context_qa", "prompts": {"question": "{documents}",
                                                                           "answer": "{documents} {question}"}}
    data["stages"]["synthesize"] = {"workflows": [{**workflow, **change}]}
    with pytest.raises(RecipeError, match=error):
        parse_recipe(data, test_recipe.path)
