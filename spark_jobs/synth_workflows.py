"""The synthesis workflows as plain functions: seeds (dicts) + a workflow spec + an LLM client ->
synthetic rows (dicts, `drop_reason` set on rejected ones). No Spark here.

Each workflow advances all its seeds one step at a time, so every step is one batched
`client.chat` call (what keeps a batched backend busy). Sampling seeds derive from the recipe seed,
the seed row and the workflow, so a sample never depends on which other seeds shared its batch.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from phiflow.ids import doc_id
from phiflow.llm import ChatRequest, LLMClient
from phiflow.recipe import SandboxParams, SynthWorkflow
from phiflow.sandbox import SandboxLimits, run_python

CODE_BLOCK = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S)


def sampling_seed(base: int, seed_id: str, workflow: str, *parts: object) -> int:
    text = "\x1f".join(map(str, (base, seed_id, workflow, *parts)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big")


def fill(template: str, **values: str) -> str:
    """str.format with only the named placeholders replaced (code in seeds has braces of its own)."""
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), template)


def extract_code(text: str) -> str:
    """The first fenced code block, else the text itself (models often answer with bare code)."""
    m = CODE_BLOCK.search(text)
    return (m.group(1) if m else text).strip()


def normalize_code(code: str) -> str:
    """Comments, docstrings-free blank lines and spacing removed: compares what code does, not looks."""
    lines = [re.sub(r"\s+", " ", ln.split("#", 1)[0]).strip() for ln in code.splitlines()]
    return "\n".join(ln for ln in lines if ln)


def ast_fingerprint(code: str) -> str | None:
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return None
    for node in ast.walk(tree):  # names are free: an equivalent program with other identifiers matches
        if isinstance(node, ast.Name):
            node.id = "_"
        elif isinstance(node, ast.arg):
            node.arg = "_"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.name = "_"
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def code_match(original: str, regenerated: str, wf: SynthWorkflow, sandbox: SandboxParams) -> tuple[bool, dict]:
    """Does the regenerated code match the original (the instruction-reversal filter)?"""
    if wf.match == "ast":
        a, b = ast_fingerprint(original), ast_fingerprint(regenerated)
        return a is not None and a == b, {"match": "ast"}
    if wf.match == "tests":  # the original's own asserts/doctest outputs must hold for the new code
        a, b = (run_python(c, limits(sandbox)) for c in (original, regenerated))
        return a.ok and b.ok and a.stdout == b.stdout, {"match": "tests", "stdout_equal": a.stdout == b.stdout}
    ratio = difflib.SequenceMatcher(None, normalize_code(original), normalize_code(regenerated)).ratio()
    return ratio >= wf.min_similarity, {"match": "similarity", "similarity": round(ratio, 4)}


def limits(p: SandboxParams) -> SandboxLimits:
    return SandboxLimits(cpu_s=p.cpu_s, wall_s=p.wall_s, memory_mb=p.memory_mb)


def final_answer(text: str) -> str:
    """What votes compare: the last number if there is one, else the last non-empty line, normalized."""
    numbers = re.findall(r"-?\d+(?:[.,]\d+)?", text.replace(",", ""))
    if numbers:
        return numbers[-1].rstrip("0").rstrip(".") if "." in numbers[-1] else numbers[-1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return re.sub(r"[^\w ]", "", lines[-1].lower()).strip() if lines else ""


def plurality(answers: list[str]) -> tuple[str | None, str | None, dict[str, int]]:
    """(reference answer, drop reason, vote counts): all agree -> too easy; no strict plurality -> ambiguous."""
    finals = [final_answer(a) for a in answers]
    counts = Counter(finals)
    ranked = counts.most_common()
    top, n_top = ranked[0]
    if n_top == len(answers):
        return None, "vote_unanimous", dict(counts)
    if n_top == 1 or (len(ranked) > 1 and ranked[1][1] == n_top):
        return None, "vote_no_plurality", dict(counts)
    return answers[finals.index(top)], None, dict(counts)


@dataclass
class Job:
    """One sample in progress: its seed, its transcript, and what it has become so far."""

    seed: dict[str, Any]
    index: int
    history: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    drop: str | None = None
    tokens: int = 0
    done: bool = False
    cut: list[str] = field(default_factory=list)  # outputs the model stopped at max_tokens (finish_reason "length")


class Runner:
    """Runs one workflow over a batch of seeds."""

    def __init__(self, wf: SynthWorkflow, client: LLMClient, base_seed: int, sandbox: SandboxParams) -> None:
        self.wf, self.client, self.base_seed, self.sandbox = wf, client, base_seed, sandbox

    def step(self, jobs: list[Job], build: Callable[[Job], list[dict[str, str]]], name: str,
             n: int = 1, temperature: float | None = None) -> list[list[str]]:
        """One batched LLM call: a request per live job; the answer joins each job's history."""
        live = [j for j in jobs if not j.done]
        reqs = [ChatRequest(
            messages=build(j), n=n, max_tokens=self.wf.max_tokens,
            temperature=self.wf.temperature if temperature is None else temperature,
            seed=sampling_seed(self.base_seed, j.seed["doc_id"], self.wf.name, j.index, name, j.round),
        ) for j in live]
        results = self.client.chat(reqs) if reqs else []
        out: dict[int, list[str]] = {}
        for j, req, res in zip(live, reqs, results, strict=True):
            j.history.append({"role": "user", "name": name, "content": req.messages[-1]["content"]})
            j.history.extend({"role": "assistant", "name": name, "content": t} for t in res.texts)
            j.cut += [t.strip() for t, why in zip(res.texts, res.finish_reasons, strict=False) if why == "length"]
            j.tokens += res.completion_tokens
            out[id(j)] = res.texts
        return [out.get(id(j), []) for j in jobs]

    def run(self, seeds: list[dict[str, Any]]) -> list[Job]:
        jobs = [Job(seed=s, index=i) for s in seeds for i in range(self.wf.samples_per_seed)]
        getattr(self, self.wf.kind)(jobs)
        for j in jobs:
            if not j.drop and not j.text.strip():
                j.drop = "empty_output"
            if not j.drop and self.wf.drop_truncated and any(c and c in j.text for c in j.cut):  # ends mid-thought
                j.drop = "truncated_output"
            if not j.drop and self.wf.execute:
                res = run_python(extract_code(j.text), limits(self.sandbox))
                j.meta["execution"] = {"ok": res.ok, "reason": res.reason}
                if not res.ok:
                    j.drop = "execution_failed"
        return jobs

    def user(self, key: str, **values: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": fill(self.wf.prompts[key], rubric=self.wf.rubric, **values)}]

    # -- the workflow kinds ----------------------------------------------------------------
    def rewrite(self, jobs: list[Job]) -> None:
        for j, texts in zip(jobs, self.step(jobs, lambda j: self.user("rewrite", seed=j.seed["text"]), "rewrite"),
                            strict=True):
            j.text, j.round = texts[0], 1

    def self_revision(self, jobs: list[Job]) -> None:
        for j, texts in zip(jobs, self.step(jobs, lambda j: self.user("draft", seed=j.seed["text"]), "draft"),
                            strict=True):
            j.text = texts[0]
        for _ in range(self.wf.rounds):
            critiques = self.step(jobs, lambda j: self.user("critique", seed=j.seed["text"], draft=j.text),
                                  "critique", temperature=0.0)
            for j, c in zip(jobs, critiques, strict=True):
                if c and self.wf.accept_marker.lower() in c[0].lower():
                    j.done = True  # the critic has nothing left to fix
                elif c:
                    j.meta["critique"] = c[0]
            revised = self.step(jobs, lambda j: self.user("revise", seed=j.seed["text"], draft=j.text,
                                                          critique=j.meta.get("critique", "")), "revise")
            for j, r in zip(jobs, revised, strict=True):
                if r:
                    j.text, j.round = r[0], j.round + 1
        for j in jobs:
            j.meta.pop("critique", None)
            j.done = False

    def multi_agent(self, jobs: list[Job]) -> None:
        turns: dict[int, list[str]] = {id(j): [] for j in jobs}
        for _ in range(self.wf.rounds):
            for role in self.wf.roles:
                def build(j: Job, role=role) -> list[dict[str, str]]:
                    transcript = "\n\n".join(turns[id(j)]) or "(no turns yet)"
                    return [{"role": "system", "content": role.system},
                            *self.user("turn", seed=j.seed["text"], transcript=transcript, role=role.name)]
                for j, texts in zip(jobs, self.step(jobs, build, role.name), strict=True):
                    turns[id(j)].append(f"{role.name}: {texts[0].strip()}")
            for j in jobs:
                j.round += 1
        for j in jobs:
            j.text = "\n\n".join(turns[id(j)])

    def instruction_reversal(self, jobs: list[Job]) -> None:
        instr = self.step(jobs, lambda j: self.user("instruction", code=j.seed["text"]), "instruction",
                          temperature=0.0)
        for j, t in zip(jobs, instr, strict=True):
            j.meta["instruction"] = t[0].strip()
        code = self.step(jobs, lambda j: self.user("code", instruction=j.meta["instruction"]), "code",
                         temperature=0.0)
        for j, c in zip(jobs, code, strict=True):
            regenerated = extract_code(c[0])
            ok, info = code_match(extract_code(j.seed["text"]), regenerated, self.wf, self.sandbox)
            j.meta.update(info)
            j.round = 1
            j.text = f"{j.meta['instruction']}\n\n```python\n{regenerated}\n```"
            if not ok:
                j.drop = "reversal_mismatch"

    def plurality_vote(self, jobs: list[Job]) -> None:
        qs = self.step(jobs, lambda j: self.user("question", seed=j.seed["text"]), "question")
        for j, q in zip(jobs, qs, strict=True):
            j.meta["question"] = q[0].strip()
        answers = self.step(jobs, lambda j: self.user("answer", question=j.meta["question"]), "answer",
                            n=self.wf.votes, temperature=max(self.wf.temperature, 0.7))
        for j, a in zip(jobs, answers, strict=True):
            reference, drop, votes = plurality(a)
            j.meta["votes"], j.drop, j.round = votes, drop, 1
            j.text = f"{j.meta['question']}\n\n{reference}" if reference else ""
            if reference:
                j.meta["reference"] = reference


def synthesize_seeds(seeds: list[dict[str, Any]], wf: SynthWorkflow, client: LLMClient, base_seed: int,
                     sandbox: SandboxParams) -> list[dict[str, Any]]:
    """Rows of the SYNTHETIC schema (plus drop_reason) for one workflow over some seeds."""
    rows = []
    for j in Runner(wf, client, base_seed, sandbox).run(seeds):
        rows.append({
            "doc_id": doc_id("synthetic", f"{wf.name}:{j.seed['doc_id']}:{j.index}"),
            "source": "synthetic",
            "source_uri": j.seed["source_uri"],
            "parent_ids": [j.seed["doc_id"]],
            "workflow": wf.name, "kind": wf.kind, "sample_index": j.index, "round": j.round,
            "model": client.model, "text": j.text, "history": j.history,
            "meta": json.dumps(j.meta, sort_keys=True, ensure_ascii=False),
            "completion_tokens": j.tokens, "drop_reason": j.drop,
        })
    return rows
