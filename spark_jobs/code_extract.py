"""code_extract: one collection of code repositories -> one `<code source>.extracted` partition.

spark-submit entry point. The input units (git working trees or bare repositories, source tarballs,
The Stack-style Parquet/JSONL of files) are read by `code_files`; each file gets its language, its
licence (SPDX header, else the nearest licence file of its repository, else the input's licence
column) and the code rules of `code_rules`, every rule a named drop reason in the manifest. Units
that cannot be read count against the failure budget (spark_jobs.engine.collection_extract).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from phiflow.manifest import Manifest
from phiflow.recipe import CodeExtractParams
from phiflow.records.code_files import (
    ARCHIVE_SUFFIXES,
    CORRUPT_ARCHIVE,
    CORRUPT_FILE,
    TABLE_SUFFIXES,
    InputProblem,
    SourceFile,
    list_inputs,
    read_input,
)
from phiflow.records.code_rules import CodeRules, code_row, license_tree, nearest_license
from phiflow.schema import CODE_EXTRACTED
from spark_jobs.engine.collection_extract import collection_root, extract_collection, remote_units
from spark_jobs.engine.stage_io import StageContext, counts, stage_main

STAGE = "code_extract"
LOST = frozenset({CORRUPT_ARCHIVE, CORRUPT_FILE})


def code_rules(params: CodeExtractParams) -> CodeRules:
    rules = CodeRules(
        allowed_licenses=frozenset(params.licenses),
        min_bytes=params.min_bytes,
        max_bytes=params.max_bytes,
        max_line_length=params.max_line_length,
        max_mean_line_length=params.max_mean_line_length,
        min_alpha_fraction=params.min_alpha_fraction,
        languages=frozenset(params.languages) if params.languages is not None else None,
    )
    if params.vendored_dirs is not None:
        rules = CodeRules(**{**rules.__dict__, "vendored_dirs": tuple(params.vendored_dirs)})
    return rules


def problem_row(p: InputProblem, source: str) -> dict[str, Any]:
    return {"doc_id": "", "source": source, "source_uri": p.origin, "parent_ids": [], "drop_reason": p.reason}


def unit_rows(params: CodeExtractParams, source: str):  # -> (local unit path) -> rows
    """Rows of one unit: its files are read first (a licence file may follow the files it covers)."""
    rules = code_rules(params)

    def rows_of(unit: str) -> Iterator[dict[str, Any]]:
        files: list[SourceFile] = []
        for item in read_input(unit, params.max_bytes):
            if isinstance(item, InputProblem):
                yield problem_row(item, source)
            else:
                files.append(item)
        tree = license_tree(files)
        for f in files:
            yield code_row(f, nearest_license(f, tree), rules, source)

    return rows_of


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.code_extract
    _, root = collection_root(ctx)
    units = remote_units(root, ARCHIVE_SUFFIXES + TABLE_SUFFIXES) if "://" in root else list_inputs(root)
    col = ctx.recipe.source(ctx.source).collection(ctx.partition["collection"])
    if col.max_files:
        units = units[: col.max_files]

    def counters(kept) -> dict[str, Any]:
        return {"languages": counts(kept, "language"), "licenses": counts(kept, "license"),
                "repositories": kept.select("repo").distinct().count()}

    return extract_collection(
        spark, ctx, stage=STAGE, units=units, rows_of=unit_rows(params, ctx.source), schema=CODE_EXTRACTED,
        lost=LOST, units_per_task=params.units_per_task, failure_budget=params.failure_budget, counters=counters,
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
