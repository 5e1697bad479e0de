"""The code and documents sources through Spark: the sample collections (real Debian code and books)
and broken inputs, each a counted reason, never a crash; then quality, dedup and the repository
concatenation on the code source."""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from phiflow.recipe import parse_recipe
from phiflow.storage import Lake
from spark_jobs import code_extract, code_repos, documents_extract, quality
from spark_jobs.engine.stage_io import StageContext

pytestmark = pytest.mark.spark
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo.yaml"
SAMPLE = ROOT / "data" / "sample"
CODE_MANIFEST = json.loads((SAMPLE / "code" / "manifest.json").read_text())


def recipe_with(code_root: Path, books_root: Path, **stage_changes):
    data = copy.deepcopy(yaml.safe_load(DEMO.read_text()))
    data["sources"]["code"] = {"kind": "code", "base_url": str(code_root),
                               "collections": [{"id": "c1", "date": "2024-06-03", "path": "."}]}
    data["sources"]["books"] = {"kind": "documents", "base_url": str(books_root),
                                "collections": [{"id": "b1", "date": "2024-06-03", "path": "."}]}
    for stage, changes in stage_changes.items():
        data["stages"].setdefault(stage, {}).update(changes)
    return parse_recipe(data, DEMO)


def ctx(recipe, lake: Lake, source: str, col: str) -> StageContext:
    return StageContext(recipe=recipe, source=source, partition={"collection": col}, lake=lake)


def tar_gz(path: Path, top: str, files: dict[str, bytes], cut: float | None = None) -> None:
    """A gzipped tarball; `cut`: keep only that share of its bytes (a download that stopped)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    path.write_bytes(raw[: int(len(raw) * cut)] if cut else raw)


MIT = b"""MIT License

Copyright (c) 2024 Example

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.
"""
MODULE = b'"""A module that does real work."""\n\n\ndef area(width: float, height: float) -> float:\n' \
         b'    """The area of a rectangle."""\n    return width * height\n' * 3


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    code = tmp_path_factory.mktemp("code")
    tar_gz(code / "good-1.0.tar.gz", "good-1.0", {"LICENSE": MIT, "good/geometry.py": MODULE,
                                                  "good/latin1.py": "# caf\xe9 \n".encode("latin-1") + MODULE})
    rng = random.Random(0)  # incompressible comments: the cut lands in the middle of the members
    big = {f"pkg/mod{i:02d}.py": MODULE + "".join(f"# {rng.getrandbits(64):x}\n" for _ in range(200)).encode()
           for i in range(30)}
    tar_gz(code / "corrupt-2.0.tar.gz", "corrupt-2.0", {"LICENSE": MIT, **big}, cut=0.5)
    repo = code / "nolicense"
    repo.mkdir()
    (repo / "util.py").write_bytes(MODULE)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@e", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    books = tmp_path_factory.mktemp("books")
    (books / "empty.txt").write_text("   \n\n")
    (books / "binary.txt").write_bytes(bytes(range(256)) * 64)
    chapter = ("It was a bright cold day in April, and the clocks were striking thirteen. The hall-\n"
               "way smelt of boiled cabbage and old rag mats, at one end of which a coloured poster\n"
               "had been tacked to the wall, too large for indoor display.\n\n") * 40
    (books / "novel.txt").write_text(chapter)
    (books / "novel.json").write_text(json.dumps({"title": "A Novel", "author": "A. Writer", "license": "CC0-1.0"}))
    with gzip.open(books / "cut.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"text": chapter, "title": "Whole"}) + "\n")
    data = (books / "cut.jsonl.gz").read_bytes()
    (books / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    return code, books


def test_broken_inputs_are_counted_reasons(spark, broken, tmp_path) -> None:
    code, books = broken
    recipe = recipe_with(code, books, code_extract={"failure_budget": 0.5},
                         documents_extract={"failure_budget": 0.5})
    lake = Lake(str(tmp_path / "lake"))
    m = code_extract.run(spark, ctx(recipe, lake, "code", "c1"))
    dropped = m.counters["dropped"]
    assert dropped["corrupt_archive"] == 1  # the truncated tarball, after what it held was read
    assert dropped["no_license"] == 1  # the repository without a licence file
    assert dropped["invalid_encoding"] == 1  # the latin-1 file of the good tarball
    assert m.counters["units"] == {"total": 3, "failed": 1, "failed_units": [str(code / "corrupt-2.0.tar.gz")]}
    kept = sorted(lake.read_table(m).to_pylist(), key=lambda r: (r["repo"], r["path"]))
    good = [r for r in kept if r["repo"] == "good-1.0"]
    assert [(r["path"], r["license"], r["language"]) for r in good] == [("good/geometry.py", "MIT", "Python")]
    assert good[0]["text"] == MODULE.decode()
    # what the truncated tarball held before the damage is kept, in member order
    salvaged = [r["path"] for r in kept if r["repo"] == "corrupt-2.0"]
    assert 0 < len(salvaged) < 30 and salvaged == [f"pkg/mod{i:02d}.py" for i in range(len(salvaged))]

    d = documents_extract.run(spark, ctx(recipe, lake, "books", "b1"))
    assert d.counters["dropped"]["empty"] == 1
    assert d.counters["dropped"]["invalid_encoding"] == 1
    assert d.counters["dropped"]["corrupt_file"] == 1
    (novel,) = lake.read_table(d).to_pylist()
    assert (novel["title"], novel["author"], novel["license"]) == ("A Novel", "A. Writer", "CC0-1.0")
    assert "hallway smelt" in novel["text"] and "hall-\n" not in novel["text"]  # dehyphenated
    assert "striking thirteen. The hallway" in novel["text"]  # hard wraps reflowed
    assert d.counters["cleaning"]["dehyphenated"] == 40


def test_failure_budget_refuses_to_commit(spark, broken, tmp_path) -> None:
    code, books = broken
    recipe = recipe_with(code, books, code_extract={"failure_budget": 0.0})
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(RuntimeError, match="1 of 3 input units of c1 could not be read"):
        code_extract.run(spark, ctx(recipe, lake, "code", "c1"))
    assert lake.manifest("code.extracted", {"collection": "c1"}) is None


def test_sample_code_licences_and_repositories(spark, tmp_path) -> None:
    """The real sample: the GPL package is dropped by the allowlist, the permissive ones kept with their
    SPDX licence; quality passes code without the prose rules; each repository is one long document."""
    recipe = recipe_with(SAMPLE / "code", SAMPLE / "books")
    lake = Lake(str(tmp_path / "lake"))
    m = code_extract.run(spark, ctx(recipe, lake, "code", "c1"))
    rows = lake.read_table(m, columns=["repo", "license", "language", "path"]).to_pylist()
    repos = {r["repo"] for r in rows}
    tarballs = {t["top_dir"]: t for t in CODE_MANIFEST["tarballs"]}
    assert {t for t, v in tarballs.items() if v["permissive"]} <= repos  # build-time truth of the sample
    assert not {t for t, v in tarballs.items() if not v["permissive"]} & repos  # GPL: dropped by the allowlist
    assert m.counters["dropped"]["license_not_allowed"] > 0
    for top, t in tarballs.items():
        if t["permissive"]:
            assert {r["license"] for r in rows if r["repo"] == top} == {t["license"]}, top
    assert {"Python", "C"} <= {r["language"] for r in rows}
    q = quality.run(spark, ctx(recipe, lake, "code", "c1"))
    assert q.row_count == m.row_count  # the text rules (words, prose) do not judge code

    clean = lake.require("code.quality", {"collection": "c1"})
    _alias(lake, clean, "code.clean")
    r = code_repos.run(spark, ctx(recipe, lake, "code", "c1"))
    docs = {d["repo"]: d for d in lake.read_table(r).to_pylist()}
    assert set(docs) == repos - {n for n in repos if sum(x["repo"] == n for x in rows) < 2}
    six = docs["six-1.16.0"]
    assert six["files"] == len(six["parent_ids"]) and "# file: six.py" in six["text"]
    c = docs["cJSON-1.7.15"]  # C: the header is a C comment, and a file comes after what it includes
    assert "// file: cJSON.h" in c["text"]
    assert c["text"].index("// file: cJSON.h") < c["text"].index("// file: cJSON.c")


def _alias(lake: Lake, m, dataset: str) -> None:
    """Commit `m`'s files as `dataset` (stands in for dedup and decontaminate, tested on their own)."""
    from phiflow.commit import commit_files
    from phiflow.schema import CODE_EXTRACTED

    attempt = lake.new_attempt(dataset, m.partition)
    target = lake.attempt_path(dataset, m.partition, attempt)
    for f in lake.data_files(m):
        lake.fs.copy(f, f"{target}/{Path(f).name}")
    commit_files(lake, dataset=dataset, partition=m.partition, attempt=attempt, stage="decontaminate",
                 schema=CODE_EXTRACTED, row_count=m.row_count, content=[("", [])], inputs=[m.input_ref()],
                 recipe_digest="test", params={}, airflow={}, started=0.0, counters={"read": m.row_count})
