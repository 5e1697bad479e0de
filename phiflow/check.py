"""`phiflow check RECIPE`: prove, before a cluster is booked, that a recipe's stage graph closes.

The graph comes from the stage table (phiflow.stages): every source contributes its curation chain,
every seeding source its synthesis, the mixture its training. Every dataset that a stage, the
mixture, midtraining, seed selection, an allowlist or an ablation consumes must be produced by a
declared stage of a declared source. The other mistakes users make (shares, epochs, missing
benchmark files, an LLM without a connection, relative paths) are checks too, each a
`field.path: reason` line.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from phiflow import stages
from phiflow.recipe import Recipe, RecipeError, load_recipe


@dataclass(frozen=True)
class Problem:
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


@dataclass(frozen=True)
class Node:
    """One stage run of the graph: a stage for a source (or a dataset, or the whole recipe)."""

    stage: stages.Stage
    source: str
    io: stages.StageIO


def nodes(recipe: Recipe) -> list[Node]:
    """Every stage run the recipe's DAGs hold, in DAG order."""
    out: list[Node] = []
    for name in recipe.sources:
        out += [Node(st, name, st.io(recipe, name)) for st in stages.curation_chain(recipe, name)]
    for name in stages.seed_sources(recipe):
        for st in map(stages.stage, ("seed_select", "synthesize")):
            if recipe.stages.synthesize.workflows or st.name == "seed_select":
                out.append(Node(st, name, st.io(recipe, name)))
    if recipe.mixture is not None and recipe.training is not None:
        for d in stages.training_datasets(recipe):
            out.append(Node(stages.stage("tokenize"), d, stages.io(recipe, "tokenize", d)))
        for name in ("mix", *(["stress"] if recipe.training.stress else []), "pretrain", "midtrain"):
            out.append(Node(stages.stage(name), "*", stages.io(recipe, name, "*")))
    return out


def produced(recipe: Recipe) -> dict[str, Node]:
    """Dataset -> the stage run that commits it."""
    out: dict[str, Node] = {}
    for n in nodes(recipe):
        for d in n.io.outputs:
            out.setdefault(d, n)
    return out


def _input_field(node: Node) -> str:
    """The recipe field a user edits to change where a stage reads from."""
    configurable = {"dedup": "stages.dedup.input", "decontaminate": "stages.decontaminate.input",
                    "seed_select": "stages.seed_select.input_suffix"}
    return configurable.get(node.stage.name, f"sources.{node.source}")


def _missing(field: str, dataset: str, made: dict[str, Node], consumer: str) -> Problem:
    pool = sorted(d for d in made if d.startswith("tokens.") == dataset.startswith("tokens."))
    near = difflib.get_close_matches(dataset, pool, n=3, cutoff=0.5)
    hint = f"; nearest produced: {', '.join(near)}" if near else ""
    return Problem(field, f"{dataset} ({consumer}) is produced by no stage of any declared source{hint}")


def graph_problems(recipe: Recipe) -> list[Problem]:
    made = produced(recipe)
    problems: list[Problem] = []
    for n in nodes(recipe):
        if n.stage.name == "tokenize":  # its inputs are the mixture's, reported below by their field
            continue
        where = f"read by {n.stage.name} of {n.source}"
        for d in n.io.inputs:
            if d not in made:
                problems.append(_missing(_input_field(n), d, made, where))
        for field, d in n.io.references:
            if d not in made:
                problems.append(_missing(field, d, made, where))
    if recipe.mixture is not None:
        for i, src in enumerate(recipe.mixture.sources):
            for j, d in enumerate(src.datasets):
                if d not in made:
                    field = f"mixture.sources[{i}].datasets[{j}]"
                    problems.append(_missing(field, d, made, f"mixture group {src.name}"))
    if recipe.training is not None:
        for i, src in enumerate(recipe.training.midtrain.long_context):
            for j, d in enumerate(src.datasets):
                if d not in made:
                    problems.append(_missing(f"training.midtrain.long_context[{i}].datasets[{j}]", d, made,
                                             f"long-context group {src.name}"))
    return problems


def mixture_problems(recipe: Recipe) -> list[Problem]:
    """Epochs the shares imply over the declared unique tokens, against each group's max_epochs."""
    mix = recipe.mixture
    if mix is None or mix.total_tokens is None:
        return []
    out = []
    for i, src in enumerate(mix.sources):
        unique = src.subsample_tokens or src.report_unique_tokens
        if unique and src.max_epochs is not None:
            epochs = src.share * mix.total_tokens / unique
            if epochs > src.max_epochs + 1e-9:
                out.append(Problem(f"mixture.sources[{i}].share",
                                   f"{src.name}: {src.share:g} of {mix.total_tokens:.3g} tokens is {epochs:.2f} epochs "
                                   f"of its {unique:.3g} unique tokens, above max_epochs {src.max_epochs:g}"))
    return out


def file_problems(recipe: Recipe) -> list[Problem]:
    """Benchmark files that are not there, and an LLM backend nobody can reach."""
    out = []
    if not recipe.stages.decontaminate.benchmarks:
        out.append(Problem("stages.decontaminate.benchmarks", "empty: decontamination would flag nothing"))
    for i, b in enumerate(recipe.stages.decontaminate.benchmarks):
        path = recipe.resolve(b.path)
        if "://" not in path and not Path(path).exists():
            out.append(Problem(f"stages.decontaminate.benchmarks[{i}].path",
                               f"{b.name}: {path} does not exist ({_relative_note(recipe, b.path)})"))
    for field, cfg in (("llm", recipe.llm), ("stages.quality_annotate", recipe.stages.quality_annotate)):
        if field != "llm" and not stages.classifier_families(recipe):
            continue
        if cfg.backend == "openai" and not cfg.base_url and not getattr(cfg, "api_key_conn_id", None):
            out.append(Problem(f"{field}.base_url",
                               "backend openai needs a server: set base_url, or api_key_conn_id to an Airflow "
                               "connection whose host is the server"))
    return out


def _relative_note(recipe: Recipe, location: str) -> str:
    if "://" in location or Path(location).is_absolute():
        return "absolute"
    return f"relative to the recipe's folder {recipe.path.parent if recipe.path else '?'}"


def relative_paths(recipe: Recipe) -> list[tuple[str, str, str]]:
    """(field, as written, resolved) of every relative path in the recipe: say what they resolve against."""
    out = [(f"sources.{n}.base_url", s.base_url, recipe.resolve(s.base_url)) for n, s in recipe.sources.items()]
    out += [(f"stages.decontaminate.benchmarks[{i}].path", b.path, recipe.resolve(b.path))
            for i, b in enumerate(recipe.stages.decontaminate.benchmarks)]
    if recipe.tokenizer.path:
        out.append(("tokenizer.path", recipe.tokenizer.path, recipe.resolve(recipe.tokenizer.path)))
    return [(f, w, r) for f, w, r in out if w != r]


def source_name_problems(recipe: Recipe) -> list[Problem]:
    """Per-source settings naming a source the recipe does not declare (a typo, or a source removed)."""
    known = sorted(recipe.sources)
    out = [Problem(f"stages.quality.overrides.{name}", f"no such source; known: {known}")
           for name in recipe.stages.quality.overrides if name not in recipe.sources]
    for i, wf in enumerate(recipe.stages.synthesize.workflows):
        unknown = sorted(set(wf.sources or ()) - set(recipe.sources))
        if unknown:
            field = f"stages.synthesize.workflows[{i}].sources"
            out.append(Problem(field, f"no such source {unknown}; known: {known}"))
    return out


def warnings(recipe: Recipe) -> list[Problem]:
    """What is allowed but likely wrong: printed by `phiflow check`, never failing it."""
    out = []
    own = [d for d in recipe.stages.decontaminate.allowlist_references if d.split(".", 1)[0] in recipe.sources]
    for d in own:
        out.append(Problem(
            "stages.decontaminate.allowlist_references",
            f"{d} is training data of this recipe: a benchmark item copied across it would count as a common "
            "phrase (documents that carry most of an item are left out of the count, but a reference corpus "
            "independent of the training data is the safe choice)",
        ))  # fmt: skip
    return out


def problems(recipe: Recipe) -> list[Problem]:
    found = [*graph_problems(recipe), *mixture_problems(recipe), *file_problems(recipe),
             *source_name_problems(recipe)]
    return list(dict.fromkeys(found))  # a stage every source runs (quality_train) reports a problem once


def graph_text(recipe: Recipe) -> str:
    """sources -> stages -> datasets -> mixture groups, with each group's share."""
    lines = [f"recipe {recipe.name} ({recipe.path})"]
    for name, src in recipe.sources.items():
        lines.append(f"source {name} ({src.kind}, {len(src.dated())} {src.partition_key}s)")
        for st in stages.curation_chain(recipe, name):
            io = st.io(recipe, name)
            reads = ", ".join(io.inputs) or f"({src.partition_key}s)"
            lines.append(f"  {st.name:<20} {reads} -> {', '.join(io.outputs)}")
    seeds = stages.seed_sources(recipe)
    if seeds:
        lines.append(f"synthesis (seeds from {', '.join(seeds)})")
        for st in map(stages.stage, ("seed_select", "synthesize")):
            ios = [st.io(recipe, s) for s in seeds]
            lines.append(f"  {st.name:<20} {', '.join(sorted({d for io in ios for d in io.inputs}))} "
                         f"-> {', '.join(ios[0].outputs)}")
    if recipe.mixture is not None:
        total = recipe.mixture.total_tokens
        lines.append(f"pretraining mixture ({f'{total:.3g} tokens' if total else 'tokens from the training steps'})")
        for src in recipe.mixture.sources:
            lines.append(f"  {src.name:<14} {src.share:>6.1%}  <- {', '.join(src.datasets)}")
    if recipe.training is not None:
        for ph in recipe.training.pretrain.phase_plan():
            shares = ", ".join(f"{k} {v:.0%}" for k, v in ph.shares.items() if v)
            lines.append(f"  phase {ph.name:<10} steps {ph.start + 1}-{ph.end}: {shares}")
        if recipe.training.stress is not None:
            st = recipe.training.stress
            lines.append(f"stress test before pretraining: lr x{', x'.join(f'{m:g}' for m in st.lr_multipliers)}, "
                         f"{st.steps} steps, {'goes on' if st.continue_on_divergence else 'stops'} on divergence")
        mid = recipe.training.midtrain
        extra = "".join(f", {s.name} {s.share:.0%} <- {', '.join(s.datasets)}" for s in mid.long_context)
        lines.append(f"midtraining: {mid.long_context_share:.0%} long-context (documents >= {mid.long_doc_tokens} "
                     f"tokens of the mixture's datasets{extra}), the rest replayed")
    rel = relative_paths(recipe)
    if rel:
        lines.append(f"relative paths resolve against the recipe's folder {recipe.path.parent if recipe.path else '?'}")
        lines += [f"  {f}: {w} -> {r}" for f, w, r in rel]
    return "\n".join(lines)


def load_error_lines(e: RecipeError) -> list[str]:
    """The `field.path: reason` lines of a recipe that does not load (schema, shares, paths)."""
    return [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]


def check_file(path: str) -> tuple[Recipe | None, list[str]]:
    """The loaded recipe (None if it does not load) and its problem lines."""
    try:
        recipe = load_recipe(path)
    except RecipeError as e:
        return None, load_error_lines(e)
    return recipe, [str(p) for p in problems(recipe)]


def require_closed(recipe: Recipe) -> None:
    """Raise RecipeError with every problem line: DAG files call this so a recipe that does not close
    refuses to load, and the Airflow UI shows the lines as the import error."""
    found = problems(recipe)
    if found:
        lines = "\n".join(str(p) for p in found)
        raise RecipeError(f"recipe {recipe.path} does not close (phiflow check):\n{lines}")
