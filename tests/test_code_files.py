"""The code source's per-record logic on real inputs built here: git working trees and bare clones,
tarballs (whole, truncated, garbage), Stack-shaped tables; every drop rule by one file it must drop
and a near miss it must keep; licences from files, headers and hints; dependency order."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import random
import subprocess
import tarfile
import zipfile
from operator import attrgetter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.records.code_files import (
    InputProblem,
    SourceFile,
    dependency_order,
    git_blob_sha,
    list_inputs,
    read_input,
)
from phiflow.records.code_rules import (
    DROP_REASONS,
    CodeRules,
    code_row,
    detect_license,
    language_of,
    license_allowed,
    license_tree,
    nearest_license,
    repo_licenses,
    spdx_header,
)

MIT = """MIT License

Copyright (c) 2024 Example Authors

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.
"""
GPL3 = """                    GNU GENERAL PUBLIC LICENSE
                       Version 3, 29 June 2007

 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>
 Everyone is permitted to copy and distribute verbatim copies of this license document.
 ... use the GNU Lesser General Public License instead of this License.
"""
APACHE = """
                                 Apache License
                           Version 2.0, January 2004
                        http://www.apache.org/licenses/
"""
PY = '"""Small helpers."""\n\n\ndef add(a, b):\n    """Sum of a and b."""\n    return a + b\n\n\ndef mul(a, b):\n'
PY += "    return a * b\n"
JS = "// Event helpers.\nexport function on(el, name, fn) {\n  el.addEventListener(name, fn);\n"
JS += "  return () => el.removeEventListener(name, fn);\n}\n"
RULES = CodeRules(allowed_licenses=frozenset({"MIT", "Apache-2.0", "BSD-3-Clause"}))
GIT_ID = (
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@example.com",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "commit.gpgsign=false",
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def files_of(unit: Path | str, max_file_bytes: int = 1 << 20) -> tuple[list[SourceFile], list[InputProblem]]:
    items = list(read_input(str(unit), max_file_bytes))
    return [i for i in items if isinstance(i, SourceFile)], [i for i in items if isinstance(i, InputProblem)]


def rows_of(files: list[SourceFile], rules: CodeRules = RULES) -> dict[str, dict]:
    """What the stage will do per repository: licence tree, then one row per file."""
    tree = license_tree(files)
    return {f.path: code_row(f, nearest_license(f, tree), rules, "code") for f in files}


def make_tar(path: Path, members: dict[str, bytes], top: str | None = "proj-1.0", mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


def one(path: str, data: str | bytes, repo: str = "r", hint: str | None = None) -> SourceFile:
    raw = data.encode() if isinstance(data, str) else data
    return SourceFile(repo, path, raw, git_blob_sha(raw), f"test!/{path}", hint)


def reason(path: str, data: str | bytes, rules: CodeRules = RULES, license: str | None = "MIT") -> str | None:
    return code_row(one(path, data), license, rules, "code")["drop_reason"]


# -- git ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("git") / "proj"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "a.py").write_text(PY)
    (repo / "LICENSE").write_text(MIT)
    (repo / "run").write_text("#!/usr/bin/env python3\nprint('hi')\n")
    (repo / "blob.bin").write_bytes(bytes(range(256)) * 4)
    (repo / "café.py").write_text(PY)
    os.symlink("LICENSE", repo / "COPYING")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    (repo / "pkg" / "a.py").write_text("uncommitted edit\n")  # HEAD is read, not the checkout
    (repo / "untracked.py").write_text(PY)
    return repo


def test_work_tree_and_bare_clone_read_the_same_committed_files(work_tree: Path, tmp_path: Path) -> None:
    bare = tmp_path / "proj.git"
    git(tmp_path, "clone", "-q", "--bare", str(work_tree), str(bare))
    tree_files, tree_problems = files_of(work_tree)
    bare_files, bare_problems = files_of(bare)
    assert tree_problems == bare_problems == []
    key = attrgetter("repo", "path", "blob_sha", "data")
    assert sorted(map(key, tree_files)) == sorted(map(key, bare_files))
    by_path = {f.path: f for f in tree_files}
    assert sorted(by_path) == ["LICENSE", "blob.bin", "café.py", "pkg/__init__.py", "pkg/a.py", "run"]  # no symlink
    assert {f.repo for f in tree_files} == {"proj"}
    assert by_path["pkg/a.py"].data == PY.encode()
    for f in tree_files:
        copy = tmp_path / "copy"
        copy.write_bytes(f.data)
        assert (
            f.blob_sha
            == git(tmp_path, "hash-object", str(copy)).strip()
            == git(work_tree, "rev-parse", f"HEAD:{f.path}").strip()
        )
    head = git(work_tree, "rev-parse", "HEAD").strip()
    assert by_path["run"].origin == f"git+{work_tree}@{head}:run"


def test_git_too_large_files_and_empty_repository(work_tree: Path, tmp_path: Path) -> None:
    files, problems = files_of(work_tree, max_file_bytes=200)
    assert [(p.reason, p.origin.rsplit(":", 1)[1]) for p in problems] == [
        ("too_large", "LICENSE"),
        ("too_large", "blob.bin"),
    ]
    assert len(files) == 4
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    assert [(type(i).__name__, i.reason) for i in read_input(str(empty), 1000)] == [
        ("InputProblem", "empty_repository")
    ]


def test_list_inputs_finds_units_and_does_not_enter_them(work_tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "mirror" / "deep").mkdir(parents=True)
    git(tmp_path, "clone", "-q", str(work_tree), str(root / "mirror" / "deep" / "proj"))
    git(tmp_path, "clone", "-q", "--bare", str(work_tree), str(root / "proj.git"))
    (root / "mirror" / "deep" / "proj" / "inner.tar.gz").write_bytes(b"")  # inside a repository: not a unit
    for name in ("b.tar.gz", "c.tgz", "d.tar.xz", "e.zip", "f.parquet", "g.jsonl", "h.jsonl.gz", "notes.txt", "x.py"):
        (root / "mirror" / name).write_bytes(b"")
    units = list_inputs(str(root))
    rel = [os.path.relpath(u, root) for u in units]
    assert rel == sorted(rel)
    assert set(rel) == {
        "mirror/deep/proj",
        "proj.git",
        "mirror/b.tar.gz",
        "mirror/c.tgz",
        "mirror/d.tar.xz",
        "mirror/e.zip",
        "mirror/f.parquet",
        "mirror/g.jsonl",
        "mirror/h.jsonl.gz",
    }
    assert list_inputs(str(root)) == units


# -- archives and licences ---------------------------------------------------------------------
def test_tarball_with_mit_license(tmp_path: Path) -> None:
    tar = make_tar(
        tmp_path / "proj_1.0.orig.tar.gz", {"LICENSE": MIT.encode(), "src/a.py": PY.encode(), "web/on.js": JS.encode()}
    )
    files, problems = files_of(tar)
    assert problems == []
    assert {(f.repo, f.path) for f in files} == {
        ("proj-1.0", "LICENSE"),
        ("proj-1.0", "src/a.py"),
        ("proj-1.0", "web/on.js"),
    }
    assert repo_licenses(files) == {"proj-1.0": "MIT"}
    rows = rows_of(files)
    assert rows["src/a.py"]["drop_reason"] is None and rows["src/a.py"]["license"] == "MIT"
    assert rows["src/a.py"]["text"] == PY and rows["src/a.py"]["language"] == "Python"
    assert rows["web/on.js"]["drop_reason"] is None and rows["web/on.js"]["language"] == "JavaScript"
    assert rows["LICENSE"]["drop_reason"] == "unknown_language"
    assert rows["src/a.py"]["source_uri"] == f"{tar}!/proj-1.0/src/a.py"
    assert rows["src/a.py"]["size_bytes"] == len(PY.encode()) and rows["src/a.py"]["line_count"] == PY.count("\n")


def test_repository_without_licence_drops_every_file(tmp_path: Path) -> None:
    files, _ = files_of(
        make_tar(tmp_path / "x.tar.gz", {"a.py": PY.encode(), "b.js": JS.encode(), "README.md": b"# x\n" * 40})
    )
    assert repo_licenses(files) == {"proj-1.0": None}
    assert {r["drop_reason"] for r in rows_of(files).values()} == {"no_license"}
    # switched off, the same files are kept
    assert {r["drop_reason"] for r in rows_of(files, CodeRules(allowed_licenses=None)).values()} == {None}


def test_spdx_header_overrides_repository_licence(tmp_path: Path) -> None:
    header = "# SPDX-License-Identifier: Apache-2.0\n" + PY
    files, _ = files_of(
        make_tar(
            tmp_path / "g.tar", {"COPYING": GPL3.encode(), "ok.py": header.encode(), "gpl.py": PY.encode()}, mode="w"
        )
    )
    rows = rows_of(files, CodeRules(allowed_licenses=frozenset({"Apache-2.0"})))
    assert rows["ok.py"]["drop_reason"] is None and rows["ok.py"]["license"] == "Apache-2.0"
    assert rows["gpl.py"]["drop_reason"] == "license_not_allowed" and rows["gpl.py"]["license"] == "GPL-3.0"


def test_nearest_licence_file_applies_below_it() -> None:
    files = [
        one("LICENSE", MIT),
        one("lib/LICENSE.txt", APACHE),
        one("lib/deep/x.py", PY),
        one("y.py", PY),
        one("other/COPYRIGHT", "Copyright 2020 Somebody. All rights reserved.\n"),
        one("other/z.py", PY),
    ]
    tree = license_tree(files)
    got = {f.path: nearest_license(f, tree) for f in files if f.path.endswith(".py")}
    assert got == {"lib/deep/x.py": "Apache-2.0", "y.py": "MIT", "other/z.py": "LicenseRef-unknown"}
    assert rows_of(files)["other/z.py"]["drop_reason"] == "license_not_allowed"


def test_two_licence_files_and_the_input_hint() -> None:
    files = [one("LICENSE-MIT", MIT), one("LICENSE-APACHE", APACHE), one("a.py", PY)]
    assert repo_licenses(files) == {"r": "Apache-2.0 AND MIT"}
    assert (
        rows_of(files, CodeRules(allowed_licenses=frozenset({"MIT"})))["a.py"]["drop_reason"] == "license_not_allowed"
    )
    hinted = one("a.py", PY, hint="BSD-3-Clause")
    assert code_row(hinted, None, RULES, "code")["license"] == "BSD-3-Clause"
    assert code_row(hinted, "MIT", RULES, "code")["license"] == "MIT"  # the repository's own file wins


def test_truncated_tarballs_yield_what_came_before_then_one_problem(tmp_path: Path) -> None:
    rng = random.Random(7)
    members = {f"f{i}.py": rng.randbytes(20_000) for i in range(6)}  # incompressible
    whole = make_tar(tmp_path / "whole.tar.gz", members).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    items = list(read_input(str(cut), 1 << 20))
    assert 1 <= len(items) - 1 < 6
    assert all(isinstance(i, SourceFile) for i in items[:-1])
    assert [f.data for f in items[:-1]] == [members[f"f{i}.py"] for i in range(len(items) - 1)]
    assert isinstance(items[-1], InputProblem) and items[-1].reason == "corrupt_archive"
    # an uncompressed tar cut exactly at a member boundary: tarfile itself would end quietly
    plain = make_tar(tmp_path / "plain.tar", members, mode="w")
    with tarfile.open(plain) as tf:
        boundary = tf.getmembers()[3].offset
    cut_plain = tmp_path / "cut.tar"
    cut_plain.write_bytes(plain.read_bytes()[:boundary])
    items = list(read_input(str(cut_plain), 1 << 20))
    assert [type(i).__name__ for i in items] == ["SourceFile"] * 3 + ["InputProblem"]
    assert items[-1].reason == "corrupt_archive"
    assert [i.reason for i in read_input(str(plain), 1 << 20) if isinstance(i, InputProblem)] == []


def test_garbage_archives_are_problems_not_exceptions(tmp_path: Path) -> None:
    for name, data in [
        ("junk.tar.gz", random.Random(1).randbytes(3000)),
        ("empty.tgz", b""),
        ("text.tar", b"hello\n" * 100),
        ("junk.zip", b"PK\x03\x04" + random.Random(2).randbytes(200)),
    ]:
        (tmp_path / name).write_bytes(data)
        items = list(read_input(str(tmp_path / name), 1 << 20))
        assert [(type(i).__name__, i.reason) for i in items] == [("InputProblem", "corrupt_archive")], name


def test_zip_duplicates_symlinks_and_too_large_members(tmp_path: Path) -> None:
    path = tmp_path / "proj-main.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("proj-main/a.py", PY)
        zf.writestr("proj-main/big.py", "x = 1\n" * 100)
        link = zipfile.ZipInfo("proj-main/link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "a.py")
    files, problems = files_of(path, max_file_bytes=500)
    assert [(f.repo, f.path) for f in files] == [("proj-main", "a.py")]
    assert [p.reason for p in problems] == ["too_large"]
    dup = tmp_path / "dup.tar"
    with tarfile.open(dup, "w") as tf:
        for data in (b"one\n", b"two\n"):
            info = tarfile.TarInfo("a.py")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    files, problems = files_of(dup)
    assert [(f.repo, f.path, f.data) for f in files] == [("dup", "a.py", b"one\n")]
    assert [p.reason for p in problems] == ["duplicate_path"]


# -- Stack-shaped tables -----------------------------------------------------------------------
STACK_ROWS = [
    {
        "max_stars_repo_name": "a/b",
        "max_stars_repo_path": "x.py",
        "content": PY,
        "max_stars_repo_licenses": ["MIT", "GPL-3.0"],
        "lang": "Python",
    },
    {
        "max_stars_repo_name": "a/b",
        "max_stars_repo_path": "y.js",
        "content": JS,
        "max_stars_repo_licenses": ["GPL-3.0"],
        "lang": "JavaScript",
    },
    {
        "max_stars_repo_name": "a/c",
        "max_stars_repo_path": "z.py",
        "content": None,
        "max_stars_repo_licenses": [],
        "lang": "Python",
    },
]


def test_stack_parquet(tmp_path: Path) -> None:
    path = tmp_path / "stack.parquet"
    pq.write_table(pa.Table.from_pylist(STACK_ROWS), path)
    files, problems = files_of(path)
    assert [(f.repo, f.path, f.license_hint) for f in files] == [("a/b", "x.py", "MIT"), ("a/b", "y.js", "GPL-3.0")]
    assert [(p.reason, p.origin) for p in problems] == [("bad_row", f"{path}#row=2")]
    rows = rows_of(files)
    assert rows["x.py"]["drop_reason"] is None and rows["x.py"]["license"] == "MIT"
    assert rows["y.js"]["drop_reason"] == "license_not_allowed"
    assert files[0].origin == f"{path}#row=0" and files[0].blob_sha == git_blob_sha(PY.encode())
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(path.read_bytes()[:-40])
    assert [(type(i).__name__, i.reason) for i in read_input(str(broken), 1 << 20)] == [
        ("InputProblem", "corrupt_file")
    ]
    nocontent = tmp_path / "meta.parquet"
    pq.write_table(pa.Table.from_pylist([{"repo": "a", "path": "b"}]), nocontent)
    assert [i.reason for i in read_input(str(nocontent), 1 << 20)] == ["corrupt_file"]


def test_stack_jsonl_plain_and_gzipped(tmp_path: Path) -> None:
    lines = [
        json.dumps({"repo": "o/r", "path": "m.py", "content": PY, "license": "Apache-2.0"}),
        "{not json",
        json.dumps([1, 2]),
        "",
        json.dumps({"repo": "o/r", "path": "n.py", "content": "x" * 50, "license": "MIT"}),
    ]
    text = "\n".join(lines) + "\n"
    plain = tmp_path / "s.jsonl"
    plain.write_text(text)
    packed = tmp_path / "s.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed):
        files, problems = files_of(path, max_file_bytes=len(PY))
        assert [(f.path, f.license_hint) for f in files] == [("m.py", "Apache-2.0"), ("n.py", "MIT")]
        assert [(p.reason, p.origin.rsplit("#", 1)[1]) for p in problems] == [
            ("bad_row", "line=2"),
            ("bad_row", "line=3"),
        ]
    files, problems = files_of(plain, max_file_bytes=60)
    assert [p.reason for p in problems] == ["too_large", "bad_row", "bad_row"]
    cut = tmp_path / "cut.jsonl.gz"
    rng = random.Random(11)
    many = "".join(
        json.dumps({"repo": "o/r", "path": f"{i}.py", "content": rng.randbytes(300).hex()}) + "\n" for i in range(50)
    )
    cut.write_bytes(gzip.compress(many.encode())[:15_000])
    items = list(read_input(str(cut), 1 << 20))
    assert 10 < len(items) < 50 and [i.reason for i in items if isinstance(i, InputProblem)] == ["corrupt_file"]


# -- encodings and drop rules ------------------------------------------------------------------
def test_encodings() -> None:
    latin1 = ("# Paramètres par défaut du café\n" + PY).encode("latin-1")
    assert reason("a.py", latin1) == "invalid_encoding"
    noise = random.Random(3).randbytes(4000)
    assert reason("a.py", noise) in ("binary", "invalid_encoding")
    assert reason("a.py", noise.replace(b"\0", b"x")) == "invalid_encoding"
    bom = code_row(one("a.py", b"\xef\xbb\xbf" + ("# Paramètres\n" + PY).encode()), "MIT", RULES, "code")
    assert bom["drop_reason"] is None and bom["text"].startswith("# Paramètres")


def test_binary_small_large() -> None:
    assert reason("a.py", PY + "\0") == "binary"
    assert reason("a.py", PY + "s = '\\0'\n") is None
    assert reason("a.py", "x = 1\n" * 16) == "too_small"  # 96 bytes
    assert reason("a.py", "#" + "x = 1\n" * 16 + "###") is None  # 100 bytes
    rules = CodeRules(allowed_licenses=None, max_bytes=1000)
    big = PY * 20
    assert reason("a.py", big[:1001], rules) == "too_large"
    assert reason("a.py", big[:1000], rules) is None
    assert reason("a.py", "x = 1\n", CodeRules(allowed_licenses=None, min_bytes=0)) is None


def test_generated() -> None:
    go = "// Code generated by protoc-gen-go. DO NOT EDIT.\n\npackage api\n\n"
    go += 'func Hello() string {\n\treturn "hello world"\n}\n'
    assert reason("api.go", go) == "auto_generated"
    assert reason("0001_initial.py", "# Generated by Django 4.2 on 2024-01-01 10:00\n" + PY) == "auto_generated"
    assert reason("msg_pb2.py", PY) == "auto_generated"
    assert (
        reason("package-lock.json", json.dumps({"name": "x", "lockfileVersion": 3, "packages": {}}, indent=2) * 3)
        == "auto_generated"
    )
    assert (
        reason("x.py", '"""Values generated by the random source are uniform."""\n' + PY) is None
    )  # prose, not a marker
    late = PY * 3 + "# the auto-generated docs live elsewhere\n"  # past the first 20 lines
    assert reason("x.py", late) is None
    assert reason("api.go", go, CodeRules(allowed_licenses=None, drop_generated=False)) is None


def test_minified_and_long_lines() -> None:
    minified = "var a=function(e,t){return e+t},b=function(e){return e*2};" * 40 + "\n"
    assert reason("app.js", minified) == "minified"
    assert reason("app.min.js", JS) == "minified"
    assert reason("admin.js", JS) is None
    prose = "const help = `" + "this string explains the option in plain words " * 30 + "`;\n"
    assert reason("help.js", prose) == "long_lines"
    one_long = JS * 8 + "// " + "a fairly long comment line " * 33 + "\n"  # 900 characters, mean stays low
    assert reason("ok.js", one_long) is None
    assert reason("help.js", prose, CodeRules(allowed_licenses=None, max_line_length=0, max_mean_line_length=0)) is None


def test_data_files() -> None:
    table = (
        "static const unsigned char font[] = {\n" + "  0x00, 0x1f, 0xa3, 0x44, 0xbe, 0xef, 0x12, 0x9c,\n" * 60 + "};\n"
    )
    assert reason("font.c", table) == "data_file"
    numbers = "DATA = [\n" + "    3.14159, 2.71828, 1.41421, 1.73205, 42, 1e-05,\n" * 60 + "]\n"
    assert reason("data.py", numbers) == "data_file"
    rng = random.Random(5)
    b64 = "BLOB = (\n" + "".join(f'    "{base64.b64encode(rng.randbytes(57)).decode()}"\n' for _ in range(40)) + ")\n"
    assert reason("blob.py", b64) == "data_file"
    cjk = "# 计算两个数的和，并返回结果。这个函数在很多地方被调用。\n" * 6 + PY  # non-ASCII letters are letters
    assert reason("sum.py", cjk) is None
    some_numbers = PY * 3 + "TABLE = [0x10, 0x20, 0x30, 0x40]\n"
    assert reason("ok.c", some_numbers) is None
    assert reason("font.c", table, CodeRules(allowed_licenses=None, min_alpha_fraction=0)) is None


def test_vendored_and_languages() -> None:
    assert reason("vendor/lib/x.py", PY) == "vendored"
    assert reason("src/Third_Party/x.py", PY) == "vendored"
    assert reason("node_modules/a/index.js", JS) == "vendored"
    assert reason("vendor.py", PY) is None
    assert reason("src/myvendor/x.py", PY) is None
    assert reason("vendor/x.py", PY, CodeRules(allowed_licenses=None, vendored_dirs=())) is None
    assert reason("notes.txt", PY) == "unknown_language"
    assert (
        reason("app.js", JS, CodeRules(allowed_licenses=None, languages=frozenset({"Python"})))
        == "language_not_allowed"
    )


def test_language_of() -> None:
    cases = {
        ("src/a.py", b""): "Python", ("a/b/Makefile", b""): "Makefile", ("CMakeLists.txt", b""): "CMake",
        ("Dockerfile", b""): "Dockerfile", ("Dockerfile.dev", b""): "Dockerfile", ("x.RS", b""): "Rust",
        ("lib.h", b"#include <stdio.h>\nint f(void);\n"): "C", ("lib.h", b"namespace x {\nclass A;\n}\n"): "C++",
        ("tool", b"#!/usr/bin/env python3\nimport sys\n"): "Python", ("run", b"#!/bin/sh\necho\n"): "Shell",
        ("srv", b"#!/usr/bin/env -S node --max-old-space-size=4096\n"): "JavaScript",
        ("x.cgi", b"#!/usr/bin/perl -w\n"): "Perl", ("bin/ruby2", b"#!/usr/local/bin/ruby2.7\n"): "Ruby",
        ("README", b"Read me.\n"): None, ("notes.txt", b"#!/usr/bin/python\n"): "Python",
        ("data.csv", b"a,b\n"): None, (".gitignore", b"*.o\n"): None,
        ("m.m", b"#import <Foundation/Foundation.h>\n"): "Objective-C", ("m.m", b"% MATLAB\nx = 1;\n"): "MATLAB",
    }  # fmt: skip
    assert {k: language_of(*k) for k in cases} == cases


# -- licences ----------------------------------------------------------------------------------
def test_detect_license_texts() -> None:
    bsd = (
        "Copyright (c) 2020, Foo\nAll rights reserved.\n\nRedistribution and use in source and binary forms, with or\n"
        "without modification, are permitted provided that the following conditions are met:\n"
    )
    bsd3 = (
        bsd
        + "3. Neither the name of the copyright holder nor the names of its contributors may be used to\n"
        + "   endorse or promote products derived from this software without specific prior written permission.\n"
    )
    dep5 = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: six\n\n"
        "Files: *\nCopyright: 2010-2020 Benjamin Peterson\nLicense: Expat\n\n"
        "Files: debian/*\nCopyright: 2020 Debian\nLicense: GPL-2+\n\nLicense: Expat\n Permission is hereby granted...\n"
    )
    cases = {
        MIT: "MIT",
        APACHE: "Apache-2.0",
        GPL3: "GPL-3.0",
        bsd: "BSD-2-Clause",
        bsd3: "BSD-3-Clause",
        "GNU LESSER GENERAL PUBLIC LICENSE\n Version 2.1, February 1999\n... GNU General Public License": "LGPL-2.1",
        "GNU LESSER GENERAL PUBLIC LICENSE\n Version 3, 29 June 2007\n": "LGPL-3.0",
        "    GNU GENERAL PUBLIC LICENSE\n       Version 2, June 1991\n": "GPL-2.0",
        "Mozilla Public License Version 2.0\n==================================\n": "MPL-2.0",
        "This is free and unencumbered software released into the public domain.\n": "Unlicense",
        "Creative Commons Legal Code\n\nCC0 1.0 Universal\n": "CC0-1.0",
        "Permission to use, copy, modify, and/or distribute this software for any purpose with or without fee"
        " is hereby granted, provided that the above copyright notice and this permission notice appear in all"
        " copies.": "ISC",
        "This software is provided 'as-is', without any express or implied warranty.\n"
        "2. Altered source versions must be plainly marked as such\n": "Zlib",
        "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2\n1. This LICENSE AGREEMENT is between": "PSF-2.0",
        MIT + "\n\nThird-party code in lib/ is under:\n" + APACHE: "MIT",  # the first licence named is the project's
        dep5: "MIT",
        dep5.replace("Files: *\n", "Files: src/*\n"): "GPL-2.0-or-later AND MIT",
        "apache-2.0\n": "Apache-2.0",
        "Copyright 2020 Somebody. All rights reserved.\n": None,
    }
    assert {k: detect_license(k) for k in cases} == cases


def test_spdx_headers_and_expressions() -> None:
    assert spdx_header("// SPDX-License-Identifier: MIT\nint x;\n") == "MIT"
    assert (
        spdx_header("/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-3-Clause) */\n")
        == "(GPL-2.0-only OR BSD-3-Clause)"
    )
    assert spdx_header("<!-- SPDX-License-Identifier: Apache-2.0 -->\n") == "Apache-2.0"
    assert spdx_header("x = 1\n" * 30 + "# SPDX-License-Identifier: MIT\n") is None  # only the first lines count
    allowed = frozenset({"MIT", "GPL-2.0"})
    assert license_allowed("GPL-3.0 OR MIT", allowed)
    assert not license_allowed("GPL-3.0 AND MIT", allowed)
    assert license_allowed("(GPL-3.0 OR MIT) AND GPL-2.0-or-later", allowed)
    assert license_allowed("gpl-2.0+ WITH Classpath-exception-2.0", allowed)
    assert not license_allowed("MIT OR", allowed)
    assert not license_allowed("(MIT", allowed)
    assert not license_allowed("MIT GPL-2.0", allowed)
    assert not license_allowed("LicenseRef-unknown", allowed)


# -- rows and dependency order -----------------------------------------------------------------
def test_doc_ids_follow_content_and_place() -> None:
    a, b = code_row(one("a.py", PY), "MIT", RULES, "code"), code_row(one("a.py", PY), "MIT", RULES, "code")
    assert a["doc_id"] == b["doc_id"]
    assert code_row(one("a.py", PY + "#\n"), "MIT", RULES, "code")["doc_id"] != a["doc_id"]
    assert code_row(one("b.py", PY), "MIT", RULES, "code")["doc_id"] != a["doc_id"]
    assert code_row(one("a.py", PY, repo="other"), "MIT", RULES, "code")["doc_id"] != a["doc_id"]
    dropped = code_row(one("a.py", PY + "\0"), "MIT", RULES, "code")
    assert dropped["text"] is None and dropped["drop_reason"] in DROP_REASONS
    assert set(a) == set(dropped) and a["parent_ids"] == [] and a["source"] == "code"
    assert 0.5 < a["alpha_fraction"] <= 1 and a["max_line_length"] == max(map(len, PY.split("\n")))


def test_dependency_order_python_chain_cycle_and_unrelated() -> None:
    files = [
        ("pkg/a.py", "Python", "from pkg import b\nimport os\n"),
        ("README.md", "Markdown", "import pkg.a\n"),
        ("pkg/b.py", "Python", "from .c import helper\n"),
        ("pkg/__init__.py", "Python", ""),
        ("pkg/c.py", "Python", "import json\n\ndef helper():\n    return 1\n"),
        ("tools/x.py", "Python", "import y\n"),
        ("tools/y.py", "Python", "from x import run\n"),
        ("tools/z.py", "Python", "from tools import (\n    x,\n    y as why,\n)\n"),
        ("src/lib/core.py", "Python", ""),
        ("app.py", "Python", "from lib.core import thing\nfrom pkg.b import *\n"),
    ]
    order = [files[i][0] for i in dependency_order(files)]
    assert sorted(order) == sorted(f[0] for f in files)
    pos = {p: k for k, p in enumerate(order)}
    assert pos["pkg/c.py"] < pos["pkg/b.py"] < pos["pkg/a.py"]
    assert pos["src/lib/core.py"] < pos["app.py"] and pos["pkg/b.py"] < pos["app.py"]
    assert pos["tools/x.py"] + 1 == pos["tools/y.py"]  # the cycle stays together, by path
    assert pos["tools/y.py"] < pos["tools/z.py"]
    assert order[0] == "README.md"  # no edges for Markdown: ties by path
    assert dependency_order(files) == dependency_order(files)


def test_dependency_order_c_includes() -> None:
    files = [
        ("src/main.c", "C", '#include <stdio.h>\n#include "util.h"\n'),
        ("src/util.c", "C", '#include "util.h"\n'),
        ("include/proj/util.h", "C", '#pragma once\n#include "proj/types/base.h"\n'),
        ("include/proj/types/base.h", "C", "typedef int base_t;\n"),
        ("a/ring.h", "C", '#include "../b/ring2.h"\n'),
        ("b/ring2.h", "C", '#include "../a/ring.h"\n'),
    ]
    order = [files[i][0] for i in dependency_order(files)]
    assert order == [
        "a/ring.h",
        "b/ring2.h",
        "include/proj/types/base.h",
        "include/proj/util.h",
        "src/main.c",
        "src/util.c",
    ]
