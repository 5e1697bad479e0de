"""The stage table: every stage of phiflow declared once.

A stage is the module that runs it, its recipe key (`stages.<key>`, the parameters whose digest a
commit pins), its engine, the source kinds it applies to, and its input and output datasets as
functions of the recipe and the source. The DAG files assemble their tasks from this table, the jobs
ask it which datasets they read and write, and `phiflow check` builds the dataset graph from it, so
the order of the stages and the names of their datasets are written in one place.

Core layer: imports the recipe schema only, no engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from phiflow.recipe import Recipe

Engine = Literal["spark", "megatron", "in_process"]
Scope = Literal["source", "dataset", "global", "sweep"]  # what its io() second argument names

@dataclass(frozen=True)
class StageIO:
    """The datasets one stage run reads and commits.

    `inputs` are read partition by partition (the same partition key as the output); `references`
    are read whole, each with the recipe field that names it (an allowlist corpus, a classifier, the
    earlier partitions of the stage's own output); `outputs[0]` is the stage's main output."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    references: tuple[tuple[str, str], ...] = ()

    @property
    def input(self) -> str:
        return self.inputs[0]

    @property
    def output(self) -> str:
        return self.outputs[0]


IOFn = Callable[[Recipe, str], StageIO]


@dataclass(frozen=True)
class Stage:
    name: str  # the task id and the name in manifests
    # its one home: `spark_jobs.<file>` for a Spark stage (spark-submit runs the file), `training.<file>`
    # for the others (an operator calls it; the training loop itself is training.pretrain under torchrun)
    module: str
    recipe_key: str | None  # `stages.<key>` of the recipe, or None (its parameters live elsewhere)
    engine: Engine
    kinds: frozenset[str]  # source kinds it applies to; empty for stages that are not per source
    io: IOFn
    scope: Scope = "source"
    partitioned_by_source: bool = False  # shared outputs (synthetic.*) key their partitions by source first
    funnel: str | None = None  # curation stages: their main output's suffix, a column of the dashboard funnel
    # Column lineage (OpenLineage): the output columns a stage computes, each from these input columns,
    # and whether the other columns of its outputs are its input's, passed through unchanged.
    derives: tuple[tuple[str, tuple[str, ...]], ...] = ()
    passes_columns: bool = False
    calls_llm: bool = False  # its job calls the recipe's `llm:` (the operator hands it the connection)

    @property
    def job_file(self) -> str:
        """The spark-submit application, relative to the repository root."""
        return self.module.replace(".", "/") + ".py"

    def digest(self, recipe: Recipe) -> str:
        """The parameters a commit of this stage pins: changing another stage's leaves it current."""
        if self.recipe_key is None:
            return recipe.digest
        return recipe.stage_digest(self.recipe_key)


# -- which source kinds take which path --------------------------------------------------------
WEB, WIKI, CODE, DOCS = "commoncrawl", "wikipedia", "code", "documents"
ALL_KINDS = frozenset({WEB, WIKI, CODE, DOCS})
NEEDS_LANGID = frozenset({WEB, DOCS})  # a wiki's language is its dump's; code has a programming language
SEED_KINDS = frozenset({WEB, DOCS, CODE})  # the report seeds from web pages, books and code repositories


def _one(inp: str | None, *outs: str, refs: tuple[tuple[str, str], ...] = ()) -> StageIO:
    return StageIO(() if inp is None else (inp,), outs, refs)


def quality_input(recipe: Recipe, source: str) -> str:
    """Quality reads language-identified rows where langid applies, else the extracted ones."""
    kind = recipe.sources[source].kind
    return f"{source}.langid" if kind in NEEDS_LANGID else f"{source}.extracted"


def classifier_name(recipe: Recipe, source: str) -> str | None:
    """The quality classifier a source is scored with: code has its own (a code grading prompt)."""
    q = recipe.stages.quality
    return q.code_classifier if recipe.sources[source].kind == CODE else q.classifier


def classifier_families(recipe: Recipe) -> dict[str, list[str]]:
    """Classifier model name -> the sources whose annotations train it (code and text apart)."""
    out: dict[str, list[str]] = {}
    for name in recipe.sources:
        model = classifier_name(recipe, name)
        if model:
            out.setdefault(model, []).append(name)
    return out


def _quality(r: Recipe, s: str) -> StageIO:
    model = classifier_name(r, s)
    field = "stages.quality.code_classifier" if r.sources[s].kind == CODE else "stages.quality.classifier"
    refs = ((field, "quality.classifier"),) if model else ()
    return _one(quality_input(r, s), f"{s}.quality", refs=refs)


def _quality_train(r: Recipe, s: str) -> StageIO:
    """The classifier that scores `s`, fitted on the annotations of every source it scores."""
    family = classifier_families(r).get(classifier_name(r, s) or "", [])
    return StageIO(tuple(f"{name}.annotations" for name in family), ("quality.classifier",))


def _dedup(r: Recipe, s: str) -> StageIO:
    refs = (("stages.dedup.cross_snapshot", f"{s}.minhash"),) if r.stages.dedup.cross_snapshot else ()
    return _one(f"{s}.{r.stages.dedup.input}", f"{s}.dedup", f"{s}.dup_clusters", f"{s}.minhash", refs=refs)


def _decontaminate(r: Recipe, s: str) -> StageIO:
    p = r.stages.decontaminate
    refs = tuple((f"stages.decontaminate.allowlist_references[{i}]", d) for i, d in enumerate(p.allowlist_references))
    return _one(f"{s}.{p.input}", f"{s}.clean", f"{s}.contamination", f"{s}.ngram_allowlist", refs=refs)


def _synthesize(r: Recipe, _s: str) -> StageIO:
    return StageIO(("synthetic.seeds",), tuple(r.stages.synthesize.output_datasets))


def training_datasets(recipe: Recipe) -> list[str]:
    """Every dataset training tokenizes: the pretraining mixture's and midtraining's long-context ones."""
    out = list(recipe.mixture.datasets) if recipe.mixture else []
    if recipe.training is not None:
        out += [d for s in recipe.training.midtrain.long_context for d in s.datasets if d not in out]
    return out


STAGES: tuple[Stage, ...] = (
    # -- curation, per source ------------------------------------------------------------------
    Stage("commoncrawl_extract", "spark_jobs.commoncrawl_extract", "commoncrawl_extract", "spark",
          frozenset({WEB}), lambda r, s: _one(None, f"{s}.extracted"), funnel="extracted"),
    Stage("wikipedia_extract", "spark_jobs.wikipedia_extract", "wikipedia_extract", "spark",
          frozenset({WIKI}), lambda r, s: _one(None, f"{s}.extracted"), funnel="extracted"),
    Stage("code_extract", "spark_jobs.code_extract", "code_extract", "spark",
          frozenset({CODE}), lambda r, s: _one(None, f"{s}.extracted"), funnel="extracted"),
    Stage("documents_extract", "spark_jobs.documents_extract", "documents_extract", "spark",
          frozenset({DOCS}), lambda r, s: _one(None, f"{s}.extracted"), funnel="extracted"),
    Stage("langid", "spark_jobs.langid", "langid", "spark",
          NEEDS_LANGID, lambda r, s: _one(f"{s}.extracted", f"{s}.langid"), funnel="langid",
          derives=(("language", ("text",)), ("language_score", ("text",))), passes_columns=True),
    Stage("quality_annotate", "spark_jobs.quality_annotate", "quality_annotate", "spark", ALL_KINDS,
          lambda r, s: _one(quality_input(r, s), f"{s}.annotations"), calls_llm=True),
    Stage("quality_train", "spark_jobs.quality_train", "quality_train", "spark", ALL_KINDS, _quality_train,
          scope="global"),
    Stage("quality", "spark_jobs.quality", "quality", "spark", ALL_KINDS, _quality, funnel="quality",
          derives=(("quality_score", ("text",)), ("topic", ("text",)), ("topic_score", ("text",))),
          passes_columns=True),
    Stage("dedup", "spark_jobs.dedup", "dedup", "spark", ALL_KINDS, _dedup, funnel="dedup",
          derives=(("content_hash", ("text",)), ("signature", ("text",)), ("bands", ("text",))),
          passes_columns=True),
    Stage("decontaminate", "spark_jobs.decontaminate", "decontaminate", "spark", ALL_KINDS, _decontaminate,
          funnel="clean", derives=(("matched_ngrams", ("text",)), ("matched_count", ("text",)),
                                   ("overlap", ("text",))), passes_columns=True),
    Stage("code_repos", "spark_jobs.code_repos", "code_repos", "spark",
          frozenset({CODE}), lambda r, s: _one(f"{s}.clean", f"{s}.repos"), funnel="repos",
          derives=(("text", ("path", "text")), ("languages", ("language",)), ("files", ("path",)))),
    # -- synthesis, per seeding source -----------------------------------------------------------
    Stage("seed_select", "spark_jobs.seed_select", "seed_select", "spark", SEED_KINDS,
          lambda r, s: _one(f"{s}.{r.stages.seed_select.input_suffix}", "synthetic.seeds"),
          partitioned_by_source=True, passes_columns=True),
    Stage("synthesize", "spark_jobs.synthesize", "synthesize", "spark", SEED_KINDS, _synthesize,
          partitioned_by_source=True, derives=(("text", ("text",)),), calls_llm=True),
    # -- training --------------------------------------------------------------------------------
    Stage("tokenize", "spark_jobs.tokenization", "tokenize", "spark", frozenset(),
          lambda r, d: _one(d, f"tokens.{d}"), scope="dataset"),
    Stage("mix", "training.mix", None, "in_process", frozenset(),
          lambda r, _s: StageIO(tuple(f"tokens.{d}" for d in training_datasets(r)), ("blend",)), scope="global"),
    Stage("stress", "training.stress", None, "megatron", frozenset(),
          lambda r, _s: _one("blend", "stress.pretrain"), scope="global"),
    Stage("pretrain", "training.train_stage", None, "megatron", frozenset(),
          lambda r, _s: _one("blend", "checkpoints.pretrain"), scope="global"),
    Stage("midtrain", "training.train_stage", None, "megatron", frozenset(),
          lambda r, _s: StageIO(("blend", "checkpoints.pretrain"), ("checkpoints.midtrain",)), scope="global"),
    # -- ablations (dags/phiflow_ablations.py; a sweep point trains with the stages above) -----------
    Stage("evaluate", "training.evaluate", None, "megatron", frozenset(),
          lambda r, _s: _one("checkpoints.pretrain", "evals.pretrain"), scope="global"),
    Stage("ablation_report", "training.sweep_report", None, "in_process", frozenset(),
          lambda r, sweep: StageIO(("checkpoints.pretrain", "evals.pretrain"), (f"ablations.{sweep}",)),
          scope="sweep"),
)

_BY_NAME = {s.name: s for s in STAGES}


def stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {sorted(_BY_NAME)}") from None


def llm_backend(recipe: Recipe, name: str) -> str | None:
    """The LLM backend a stage's job calls (None: it calls none). Quality annotation names its own."""
    if not stage(name).calls_llm:
        return None
    return recipe.stages.quality_annotate.backend if name == "quality_annotate" else recipe.llm.backend


def io(recipe: Recipe, name: str, source: str) -> StageIO:
    """The datasets stage `name` reads and commits for `source` (a dataset name for `tokenize`)."""
    return stage(name).io(recipe, source)


CURATION = ("commoncrawl_extract", "wikipedia_extract", "code_extract", "documents_extract", "langid",
            "quality_annotate", "quality_train", "quality", "dedup", "decontaminate", "code_repos")


def curation_chain(recipe: Recipe, source: str) -> list[Stage]:
    """The stages of one source's ingest DAG, in order. Annotation and classifier training run only
    for a source scored by a classifier; quality_train, which every annotated source of one classifier
    feeds, runs in each of their chains (it retrains from all annotations committed so far)."""
    kind = recipe.sources[source].kind
    scored = classifier_name(recipe, source) is not None
    return [s for s in map(stage, CURATION)
            if kind in s.kinds and (scored or s.name not in ("quality_annotate", "quality_train"))]


def seed_sources(recipe: Recipe) -> list[str]:
    """Sources the synthesis DAG seeds from."""
    return [n for n, src in recipe.sources.items() if src.kind in SEED_KINDS]


def funnel_suffixes() -> tuple[str, ...]:
    """The curation datasets' suffixes in pipeline order: the dashboard funnel's columns."""
    out: list[str] = []
    for st in map(stage, CURATION):
        if st.funnel and st.funnel not in out:
            out.append(st.funnel)
    return tuple(out)


REJECTED_SUFFIX = ".rejected"


def rejected_of(dataset: str) -> str:
    """The side dataset of the rows a stage dropped while writing `dataset` (`recipe.rejected`)."""
    return dataset + REJECTED_SUFFIX


def is_rejected(dataset: str) -> bool:
    return dataset.endswith(REJECTED_SUFFIX)
