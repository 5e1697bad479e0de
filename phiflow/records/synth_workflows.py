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
import itertools
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
SOURCES_LINE = re.compile(r"^[\W_]*sources?\b[^:\n]*:(.*)$", re.I | re.M)


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


def split_sources(text: str) -> tuple[str, set[int] | None]:
    """(answer without its `Sources: 1, 3` line, the document numbers it cites; None without the line):
    the line is taken out before voting, else its last number would be the voted answer."""
    lines = list(SOURCES_LINE.finditer(text))
    if not lines:
        return text.strip(), None
    last = lines[-1]
    body = (text[: last.start()] + text[last.end() :]).strip()
    return body, {int(n) for n in re.findall(r"\d+", last.group(1))}


def grounding(cited: set[int] | None, documents: int) -> str | None:
    """Why an answer is not a long-context answer (None: it is): it must cite documents of the context,
    at least two, and two of them far apart (not neighbours) unless the context holds only two."""
    if not cited or not cited <= set(range(1, documents + 1)):
        return "qa_not_grounded"
    if len(cited) < 2:
        return "qa_single_source"
    if documents > 2 and max(cited) - min(cited) < 2:
        return "qa_sources_adjacent"
    return None


def seed_groups(seeds: list[dict[str, Any]], wf: SynthWorkflow) -> list[list[dict[str, Any]]]:
    """The seeds behind each sample: one, or for long_context_qa `group_size` (a trailing group may be smaller).

    Seeds are dealt page by page (each page's first seed by doc_id, then each page's second...), so a
    group holds passages of different pages where it can; the same groups come out of any input order."""
    ordered = sorted(seeds, key=lambda s: s["doc_id"])
    if wf.kind != "long_context_qa":
        return [[s] for s in ordered]
    pages: dict[str, list[dict[str, Any]]] = {}
    for s in ordered:
        pages.setdefault(s["parent_ids"][0], []).append(s)
    dealt = [s for tier in itertools.zip_longest(*pages.values()) for s in tier if s is not None]
    n = wf.group_size
    return [dealt[i : i + n] for i in range(0, len(dealt), n)]


def documents(group: list[dict[str, Any]]) -> str:
    """The long context: the group's passages as numbered documents, the numbers answers cite."""
    return "\n\n".join(f"Document {i}:\n{s['text'].strip()}" for i, s in enumerate(group, 1))


@dataclass
class Job:
    """One sample in progress: its seeds, its transcript, and what it has become so far."""

    group: list[dict[str, Any]]  # one seed, or a long_context_qa group
    index: int
    history: list[dict[str, str]] = field(default_factory=list)
    text: str = ""
    round: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    drop: str | None = None
    tokens: int = 0
    done: bool = False
    cut: list[str] = field(default_factory=list)  # outputs the model stopped at max_tokens (finish_reason "length")

    @property
    def seed(self) -> dict[str, Any]:
        return self.group[0]

    @property
    def key(self) -> str:
        """Names the sample's seeds (a single seed: its doc_id) in sampling seeds and row ids."""
        return "+".join(s["doc_id"] for s in self.group)


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
            seed=sampling_seed(self.base_seed, j.key, self.wf.name, j.index, name, j.round),
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

    def run(self, groups: list[list[dict[str, Any]]]) -> list[Job]:
        jobs = [Job(group=g, index=i) for g in groups for i in range(self.wf.samples_per_seed)]
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
        answers = self.vote(jobs, lambda j: self.user("answer", question=j.meta["question"]))
        for j, a in zip(jobs, answers, strict=True):
            reference, drop, votes = plurality(a)
            j.meta["votes"], j.drop, j.round = votes, drop, 1
            j.text = f"{j.meta['question']}\n\n{reference}" if reference else ""
            if reference:
                j.meta["reference"] = reference

    def vote(self, jobs: list[Job], build: Callable[[Job], list[dict[str, str]]]) -> list[list[str]]:
        """`votes` sampled answers per job, warm enough to disagree on a question that is not trivial."""
        return self.step(jobs, build, "answer", n=self.wf.votes, temperature=max(self.wf.temperature, 0.7))

    def long_context_qa(self, jobs: list[Job]) -> None:
        """Documents -> a question joining far-apart ones -> voted answers that must cite those documents."""
        for j in jobs:
            if len(j.group) < 2:  # the trailing seed of an odd count: no multi-document question in one
                j.drop = "qa_group_too_small"
        jobs = [j for j in jobs if not j.drop]
        context = {id(j): documents(j.group) for j in jobs}
        qs = self.step(jobs, lambda j: self.user("question", documents=context[id(j)]), "question")
        for j, q in zip(jobs, qs, strict=True):
            j.meta["question"] = q[0].strip()
        answers = self.vote(jobs, lambda j: self.user("answer", documents=context[id(j)],
                                                      question=j.meta["question"]))
        for j, a in zip(jobs, answers, strict=True):
            bodies, cited = zip(*map(split_sources, a), strict=True)
            reference, drop, votes = plurality(list(bodies))
            j.meta["votes"], j.drop, j.round = votes, drop, 1
            if reference:  # the kept sample is the whole context: a long-sequence training document
                pick = bodies.index(reference)
                j.meta["reference"], j.meta["sources"] = reference, sorted(cited[pick] or [])
                j.drop = grounding(cited[pick], len(j.group))
                j.text = f"{context[id(j)]}\n\nQuestion: {j.meta['question']}\n\nAnswer: {a[pick].strip()}"


def synthesize_seeds(seeds: list[dict[str, Any]], wf: SynthWorkflow, client: LLMClient, base_seed: int,
                     sandbox: SandboxParams) -> list[dict[str, Any]]:
    """Rows of the SYNTHETIC schema (plus drop_reason) for one workflow over some seeds."""
    return synthesize_groups(seed_groups(seeds, wf), wf, client, base_seed, sandbox)


def synthesize_groups(groups: list[list[dict[str, Any]]], wf: SynthWorkflow, client: LLMClient, base_seed: int,
                      sandbox: SandboxParams) -> list[dict[str, Any]]:
    """synthesize_seeds over groups already formed (a stage batches whole groups of all the seeds)."""
    rows = []
    for j in Runner(wf, client, base_seed, sandbox).run(groups):
        rows.append({
            "doc_id": doc_id("synthetic", f"{wf.name}:{j.key}:{j.index}"),
            "source": "synthetic",
            "source_uri": j.seed["source_uri"],
            "parent_ids": [s["doc_id"] for s in j.group],
            "workflow": wf.name, "kind": wf.kind, "sample_index": j.index, "round": j.round,
            "model": client.model, "text": j.text, "history": j.history,
            "meta": json.dumps(j.meta, sort_keys=True, ensure_ascii=False),
            "completion_tokens": j.tokens, "drop_reason": j.drop,
        })
    return rows
