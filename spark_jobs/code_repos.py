"""code_repos: `<code source>.clean` partition -> `<code source>.repos`: each repository's clean files
concatenated in dependency order, one long-context document per repository.

spark-submit entry point. The report's midtraining reads long-context data; a repository whose files
follow their imports (a module after the modules it imports, `code_files.dependency_order`) reads like
one long program. Rows are grouped by repository in Spark; a repository with fewer than `min_files`
clean files is dropped by reason, and one longer than `max_chars` is cut at a file boundary.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa

from phiflow.ids import doc_id
from phiflow.manifest import Manifest
from phiflow.recipe import CodeReposParams
from phiflow.records.code_files import dependency_order
from phiflow.schema import CODE_REPOS, with_drop_reason
from spark_jobs.engine.stage_io import StageContext, commit_partition, spark_schema, stage_main

STAGE = "code_repos"
REASONS = ("repo_too_few_files",)
# Line comments by language, for the header written before each file; languages not listed get `#`.
SLASH_COMMENTS = frozenset({"C", "C++", "Cuda", "Objective-C", "Objective-C++", "Java", "JavaScript", "TypeScript",
                            "Go", "Rust", "C#", "Kotlin", "Scala", "Swift", "PHP", "Dart"})
COLUMNS = ["doc_id", "source", "source_uri", "repo", "path", "language", "text"]


def file_header(template: str, path: str, language: str | None) -> str:
    line = template.format(path=path)
    return "//" + line[1:] if language in SLASH_COMMENTS and line.startswith("#") else line


def concatenate(files: list[dict], params: CodeReposParams, source: str) -> dict:
    """One repository's row (a drop row when it has too few files)."""
    files = sorted(files, key=lambda f: f["path"])
    repo = files[0]["repo"]
    base = {"source": source, "repo": repo, "source_uri": files[0]["source_uri"].rsplit("/", 1)[0]}
    if len(files) < params.min_files:
        return {**base, "doc_id": "", "parent_ids": [], "files": len(files), "drop_reason": "repo_too_few_files"}
    order = dependency_order([(f["path"], f["language"], f["text"]) for f in files])
    parts: list[str] = []
    used: list[dict] = []
    size = 0
    for i in order:
        f = files[i]
        part = f"{file_header(params.file_header, f['path'], f['language'])}\n{f['text'].rstrip()}\n"
        if used and size + len(part) > params.max_chars:
            break
        parts.append(part)
        used.append(f)
        size += len(part) + 1
    text = "\n".join(parts)
    ids = [f["doc_id"] for f in used]
    return {
        **base,
        "doc_id": doc_id(source, "repo:" + repo + ":" + ",".join(sorted(ids))),
        "parent_ids": ids,
        "languages": sorted({f["language"] for f in used if f["language"]}),
        "files": len(used),
        "truncated": len(used) < len(files),
        "text": text,
        "text_chars": len(text),
        "drop_reason": None,
    }


def repo_rows(params: CodeReposParams, source: str) -> Callable[[pa.Table], pa.Table]:
    """The applyInArrow function: one group (a repository's files) in, one row out."""
    out = with_drop_reason(CODE_REPOS)

    def run(group: pa.Table) -> pa.Table:
        return pa.Table.from_pylist([concatenate(group.to_pylist(), params, source)], schema=out)

    return run


def run(spark, ctx: StageContext) -> Manifest:
    params = ctx.recipe.stages.code_repos
    io = ctx.io(STAGE)
    source = ctx.lake.require(io.input, ctx.partition)
    files = spark.read.parquet(*ctx.lake.data_files(source)).select(*COLUMNS)
    print(f"[phiflow] {STAGE} {source.dataset}/{source.key}: {source.row_count} files", flush=True)
    rows = files.groupBy("repo").applyInArrow(repo_rows(params, ctx.source), spark_schema(with_drop_reason(CODE_REPOS)))
    return commit_partition(
        spark,
        ctx,
        stage=STAGE,
        dataset=io.output,
        rows=rows,
        schema=CODE_REPOS,
        inputs=[source.input_ref()],
        counters={"read": source.row_count},
        known_reasons=REASONS,
        keep_rejected=True,
    )


if __name__ == "__main__":
    stage_main(STAGE, run)
