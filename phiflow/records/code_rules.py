"""Source files -> code rows: language, licence and the drop rules of the code source (pure functions).

Rules run in a fixed order and the first that fires names the row's `drop_reason`:
binary (NUL byte) -> invalid_encoding -> too_small / too_large -> vendored -> unknown_language /
language_not_allowed -> no_license / license_not_allowed -> auto_generated / minified (by name or
generator marker) -> minified / long_lines (by shape) -> data_file. The cheap tests on bytes and
the path come first; the text statistics are computed only for files that get that far.

Encoding: a file is UTF-8 (a BOM is dropped) or it is `invalid_encoding`. There is no Latin-1
fallback: any byte string decodes as Latin-1, so a fallback would turn cp1252, Shift-JIS or
binary files into mojibake that no later rule recognises.

Languages follow GitHub linguist's names (languages.yml): special file names, then extensions,
then the shebang line of an extensionless script. Generated-file detection follows linguist's
generated.rb and The Stack's filters: generator markers in the first lines, protobuf outputs,
lock files, `.min.js`. Licences come from SPDX headers and licence files (GPL-2.0, not
GPL-2.0-only: a licence text does not say which); allowlist matching ignores `-only`,
`-or-later` and `+` suffixes and case.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from phiflow.ids import doc_id
from phiflow.records.code_files import (
    BAD_ROW,
    CORRUPT_ARCHIVE,
    CORRUPT_FILE,
    DUPLICATE_PATH,
    EMPTY_REPOSITORY,
    TOO_LARGE,
    SourceFile,
)

LICENSE_NOT_ALLOWED = "license_not_allowed"
NO_LICENSE = "no_license"
AUTO_GENERATED = "auto_generated"
MINIFIED = "minified"
LONG_LINES = "long_lines"
DATA_FILE = "data_file"
VENDORED = "vendored"
BINARY = "binary"
TOO_SMALL = "too_small"
UNKNOWN_LANGUAGE = "unknown_language"
LANGUAGE_NOT_ALLOWED = "language_not_allowed"
INVALID_ENCODING = "invalid_encoding"
DROP_REASONS: tuple[str, ...] = (
    BINARY,
    INVALID_ENCODING,
    TOO_SMALL,
    TOO_LARGE,
    VENDORED,
    UNKNOWN_LANGUAGE,
    LANGUAGE_NOT_ALLOWED,
    NO_LICENSE,
    LICENSE_NOT_ALLOWED,
    AUTO_GENERATED,
    MINIFIED,
    LONG_LINES,
    DATA_FILE,
    # from code_files: whole inputs or files that could not be read
    EMPTY_REPOSITORY,
    CORRUPT_ARCHIVE,
    CORRUPT_FILE,
    BAD_ROW,
    DUPLICATE_PATH,
)

HEAD_BYTES = 4096  # what language_of and the generated-marker test look at
BINARY_SNIFF_BYTES = 8000  # git's own test: a NUL byte in the first 8000 bytes means binary
HEAD_LINES = 20
MINIFIED_MAX_SPACE_FRACTION = 0.08  # a long-line file this short of whitespace is minified, not data or prose

# -- languages ---------------------------------------------------------------------------------
FILENAMES = {
    "Makefile": "Makefile", "makefile": "Makefile", "GNUmakefile": "Makefile", "Makefile.am": "Makefile",
    "Makefile.in": "Makefile", "Makefile.inc": "Makefile", "Dockerfile": "Dockerfile",
    "Containerfile": "Dockerfile", "CMakeLists.txt": "CMake", "Rakefile": "Ruby", "Gemfile": "Ruby",
    "Vagrantfile": "Ruby", "Podfile": "Ruby", "Jenkinsfile": "Groovy", "BUILD": "Starlark",
    "BUILD.bazel": "Starlark", "WORKSPACE": "Starlark", "WORKSPACE.bazel": "Starlark", "meson.build": "Meson",
    "SConstruct": "Python", "SConscript": "Python", "PKGBUILD": "Shell", ".bashrc": "Shell",
    ".bash_profile": "Shell", ".zshrc": "Shell", ".profile": "Shell",
}  # fmt: skip
EXTENSIONS = {
    ".py": "Python", ".pyi": "Python", ".pyw": "Python", ".pyx": "Cython", ".pxd": "Cython",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".c++": "C++", ".hh": "C++",
    ".hpp": "C++", ".hxx": "C++", ".h++": "C++", ".inl": "C++", ".ipp": "C++", ".tpp": "C++",
    ".cu": "Cuda", ".cuh": "Cuda", ".m": "Objective-C", ".mm": "Objective-C++", ".cs": "C#",
    ".java": "Java", ".kt": "Kotlin", ".kts": "Kotlin", ".scala": "Scala", ".groovy": "Groovy",
    ".gradle": "Groovy", ".clj": "Clojure", ".cljs": "Clojure", ".cljc": "Clojure", ".go": "Go",
    ".rs": "Rust", ".swift": "Swift", ".dart": "Dart", ".js": "JavaScript", ".mjs": "JavaScript",
    ".cjs": "JavaScript", ".jsx": "JavaScript", ".ts": "TypeScript", ".mts": "TypeScript",
    ".cts": "TypeScript", ".tsx": "TSX", ".vue": "Vue", ".svelte": "Svelte", ".rb": "Ruby",
    ".rake": "Ruby", ".gemspec": "Ruby", ".php": "PHP", ".pl": "Perl", ".pm": "Perl", ".lua": "Lua",
    ".r": "R", ".jl": "Julia", ".hs": "Haskell", ".lhs": "Haskell", ".ml": "OCaml", ".mli": "OCaml",
    ".fs": "F#", ".fsi": "F#", ".fsx": "F#", ".ex": "Elixir", ".exs": "Elixir", ".erl": "Erlang",
    ".hrl": "Erlang", ".elm": "Elm", ".nim": "Nim", ".zig": "Zig", ".sv": "SystemVerilog",
    ".svh": "SystemVerilog", ".vhd": "VHDL", ".vhdl": "VHDL", ".f": "Fortran", ".f90": "Fortran",
    ".f95": "Fortran", ".f03": "Fortran", ".f08": "Fortran", ".pas": "Pascal", ".adb": "Ada",
    ".ads": "Ada", ".lisp": "Common Lisp", ".el": "Emacs Lisp", ".scm": "Scheme", ".rkt": "Racket",
    ".sol": "Solidity", ".tf": "HCL", ".hcl": "HCL", ".proto": "Protocol Buffer", ".thrift": "Thrift",
    ".graphql": "GraphQL", ".sql": "SQL", ".sh": "Shell", ".bash": "Shell", ".zsh": "Shell",
    ".ksh": "Shell", ".fish": "fish", ".ps1": "PowerShell", ".psm1": "PowerShell", ".bat": "Batchfile",
    ".cmd": "Batchfile", ".awk": "Awk", ".asm": "Assembly", ".s": "Unix Assembly", ".html": "HTML",
    ".htm": "HTML", ".css": "CSS", ".scss": "SCSS", ".sass": "Sass", ".less": "Less", ".xml": "XML",
    ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".ini": "INI", ".cfg": "INI",
    ".md": "Markdown", ".markdown": "Markdown", ".rst": "reStructuredText", ".tex": "TeX", ".sty": "TeX",
    ".cmake": "CMake", ".mk": "Makefile", ".mak": "Makefile", ".dockerfile": "Dockerfile", ".nix": "Nix",
    ".bzl": "Starlark", ".star": "Starlark", ".vim": "Vim Script", ".tcl": "Tcl",
    ".coffee": "CoffeeScript", ".hx": "Haxe", ".cr": "Crystal", ".gd": "GDScript", ".glsl": "GLSL",
    ".hlsl": "HLSL",
}  # fmt: skip
INTERPRETERS = {
    "python": "Python", "pypy": "Python", "sh": "Shell", "bash": "Shell", "zsh": "Shell", "ksh": "Shell",
    "dash": "Shell", "perl": "Perl", "ruby": "Ruby", "node": "JavaScript", "nodejs": "JavaScript",
    "php": "PHP", "rscript": "R", "lua": "Lua", "tclsh": "Tcl", "awk": "Awk", "julia": "Julia",
}  # fmt: skip
SHEBANG_RE = re.compile(rb"^#![ \t]*(\S+)[ \t]*([^\r\n]*)")
CPP_HEADER_RE = re.compile(
    rb"^[ \t]*(?:class[ \t]+\w+[^;\n]*$|namespace\b|template[ \t]*<|using[ \t]+namespace\b)|\bstd::"
    rb"|^[ \t]*#[ \t]*include[ \t]*<(?:iostream|string|vector|memory|map|algorithm|cstdint|cstddef)>",
    re.M,
)
OBJC_RE = re.compile(rb"^[ \t]*(?:@interface|@implementation|@protocol|@end\b|#import\b)", re.M)


def language_of(path: str, head: bytes) -> str | None:
    """Linguist's language name from the file name, the extension or the shebang; None: unknown.

    `head` is the file's first bytes (HEAD_BYTES suffice): `.h` is C++ when it uses C++, `.m` is
    MATLAB unless it is Objective-C, an extensionless script is what its interpreter runs.
    """
    name = posixpath.basename(path)
    if name in FILENAMES:
        return FILENAMES[name]
    if name.startswith("Dockerfile."):
        return "Dockerfile"
    stem, dot, ext = name.rpartition(".")
    if dot and stem:
        language = EXTENSIONS.get("." + ext.lower())
        if language == "C" and ext == "h" and CPP_HEADER_RE.search(head):
            return "C++"
        if language == "Objective-C" and not OBJC_RE.search(head):
            return "MATLAB"
        if language:
            return language
    return _shebang_language(head)


def _shebang_language(head: bytes) -> str | None:
    m = SHEBANG_RE.match(head)
    if not m:
        return None
    program = m.group(1).rsplit(b"/", 1)[-1]
    if program == b"env":  # `#!/usr/bin/env -S node --flag`: the first word that is not an option or VAR=x
        words = [w for w in m.group(2).split() if not w.startswith(b"-") and b"=" not in w]
        program = words[0] if words else b""
    name = re.sub(rb"[\d.]+$", b"", program).decode("ascii", errors="replace").lower()
    return INTERPRETERS.get(name)


# -- licences ----------------------------------------------------------------------------------
# (SPDX id, phrases that must all occur): the licence whose first phrase comes earliest in a text
# wins, so a LICENSE that names its own licence first and bundled ones later gets its own.
LICENSE_PHRASES: list[tuple[str, tuple[str, ...]]] = [
    ("Apache-2.0", (r"apache license,? (?:version |v\.? ?)2\.0",)),
    ("MIT", (
        r"permission is hereby granted, free of charge, to any person obtaining a copy",
        r"the above copyright notice and this permission notice shall be included",
    )),
    ("ISC", (
        r"permission to use, copy, modify, (?:and/or |and )?distribute this software for any purpose with or"
        r" without fee is hereby granted",
        r"provided that the above copyright notice and this permission notice appear in all copies",
    )),
    ("BSD-4-Clause", (
        r"redistribution and use in source and binary forms, with or without modification, are permitted",
        r"all advertising materials mentioning features",
    )),
    ("BSD-3-Clause", (
        r"redistribution and use in source and binary forms, with or without modification, are permitted",
        r"endorse or promote products derived from this software",
    )),
    ("BSD-2-Clause", (
        r"redistribution and use in source and binary forms, with or without modification, are permitted",
    )),
    ("AGPL-3.0", (r"gnu affero general public license,? version 3",)),
    ("LGPL-3.0", (r"gnu lesser general public license,? version 3",)),
    ("LGPL-2.1", (r"gnu lesser general public license,? version 2\.1|lesser general public license as"
                  r" published by the free software foundation; either version 2\.1",)),
    ("LGPL-2.0", (r"gnu library general public license,? version 2",)),
    ("GPL-3.0", (r"gnu general public license,? version 3|gnu general public license as published by the free"
                 r" software foundation,? either version 3",)),
    ("GPL-2.0", (r"gnu general public license,? version 2|gnu general public license as published by the free"
                 r" software foundation; either version 2",)),
    ("MPL-2.0", (r"mozilla public license,? (?:version |v\.? ?)2\.0",)),
    ("PSF-2.0", (r"python software foundation license,? version 2|license agreement is between the python"
                 r" software foundation",)),
    ("Unlicense", (r"this is free and unencumbered software released into the public domain",)),
    ("CC0-1.0", (r"cc0 1\.0 universal|creative commons zero v?1\.0",)),
    ("Zlib", (
        r"this software is provided as-is, without any express or implied warranty",
        r"altered source versions must be plainly marked as such",
    )),
    ("BSL-1.0", (r"boost software license\W+version 1\.0",)),
    ("EPL-2.0", (r"eclipse public license\W+v(?:ersion)? ?2\.0",)),
    ("EPL-1.0", (r"eclipse public license\W+v(?:ersion)? ?1\.0",)),
]  # fmt: skip
_PHRASES = [(spdx, [re.compile(p) for p in phrases]) for spdx, phrases in LICENSE_PHRASES]
KNOWN_IDS = {spdx.lower(): spdx for spdx, _ in LICENSE_PHRASES}
LICENSE_FILE_RE = re.compile(r"^(?:un)?(?:licen[cs]e|copying|copyright)s?(?:[-_.][\w.+-]*)?$", re.I)
_NOISE_RE = re.compile(r"[\"'`“”‘’]")  # quotes around 'AS IS' and the like differ between copies
_SPACE_RE = re.compile(r"(?:\s|#|\*|//|;;)+")  # whitespace and comment markers at line starts
SPDX_RE = re.compile(r"SPDX-License-Identifier:[ \t]*([^\n\r]*)", re.I)
_SPDX_VALUE_RE = re.compile(r"[\w.+:()\s-]*")
_SPDX_CLOSERS_RE = re.compile(r"\s*(?:\*/|-->|\*\)|#\}|%>|\"\"\"|''').*$")
SPDX_TOKEN_RE = re.compile(r"\(|\)|[A-Za-z0-9.+:-]+")
DEP5_RE = re.compile(r"^format:\s*\S*copyright-format", re.I | re.M)
DEBIAN_GPL_RE = re.compile(r"^(a|l)?gpl-(\d(?:\.\d)?)(\+)?$", re.I)
DEBIAN_NAMES = {"expat": "MIT", "psf-2": "PSF-2.0", "bsd-2-clause": "BSD-2-Clause", "bsd-3-clause": "BSD-3-Clause",
                "bsd-4-clause": "BSD-4-Clause", "zlib": "Zlib", "isc": "ISC", "apache-2.0": "Apache-2.0",
                "mpl-2.0": "MPL-2.0", "cc0-1.0": "CC0-1.0", "cc0": "CC0-1.0"}  # fmt: skip


def _normalise(text: str) -> str:
    return _SPACE_RE.sub(" ", _NOISE_RE.sub("", text.lower()))


def detect_license(text: str) -> str | None:
    """SPDX id (or expression, for a Debian DEP-5 file) of a licence file's text; None: not recognised."""
    if DEP5_RE.search(text[:2000]):
        return _dep5_license(text)
    bare = text.strip()
    if bare.lower() in KNOWN_IDS:  # a LICENSE that only names its licence
        return KNOWN_IDS[bare.lower()]
    norm = _normalise(text)
    best: tuple[int, int, str] | None = None
    for rank, (spdx, patterns) in enumerate(_PHRASES):
        hits = [p.search(norm) for p in patterns]
        if all(hits):
            pos = hits[0].start()  # type: ignore[union-attr]
            if best is None or (pos, rank) < best[:2]:
                best = (pos, rank, spdx)
    if best is not None:
        return best[2]
    return spdx_header(text)


def _debian_id(name: str) -> str:
    m = DEBIAN_GPL_RE.match(name)
    if m:
        version = m.group(2) if "." in m.group(2) else m.group(2) + ".0"
        return f"{(m.group(1) or '').upper()}GPL-{version}{'-or-later' if m.group(3) else ''}"
    return DEBIAN_NAMES.get(name.lower(), name)


def _dep5_license(text: str) -> str | None:
    """The `License:` of the `Files: *` stanza, else every Files stanza's licence joined by AND."""
    found: list[tuple[str, str]] = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields = dict(re.findall(r"^([\w-]+):[ \t]*([^\n]*)", stanza, re.M))
        fields = {k.lower(): v.strip() for k, v in fields.items()}
        if "files" in fields and fields.get("license"):
            tokens = SPDX_TOKEN_RE.findall(fields["license"].replace(",", " "))
            expr = " ".join(t.upper() if t.lower() in ("or", "and", "with") else _debian_id(t) for t in tokens)
            found.append((fields["files"], expr))
    if not found:
        return None
    everything = [expr for files, expr in found if "*" in files.split()]
    return everything[0] if everything else _and(sorted({expr for _, expr in found}))


def spdx_header(text: str) -> str | None:
    """The expression of an `SPDX-License-Identifier:` line among the first lines, comment closers cut."""
    head = _head(text)
    m = SPDX_RE.search(head) if "spdx" in head.lower() else None
    if not m:
        return None
    value = _SPDX_CLOSERS_RE.sub("", m.group(1))
    expr = " ".join(_SPDX_VALUE_RE.match(value).group(0).split())  # type: ignore[union-attr]
    return expr or None


def _and(exprs: list[str]) -> str:
    if len(exprs) == 1:
        return exprs[0]
    return " AND ".join(f"({e})" if " OR " in e else e for e in exprs)


def _canonical(spdx: str) -> str:
    """`GPL-2.0-or-later`, `gpl-2.0+`, `GPL-2.0-only` -> `gpl-2.0`: the allowlist names versions, not grants."""
    s = spdx.lower().removesuffix("+")
    for suffix in ("-or-later", "-only"):
        s = s.removesuffix(suffix)
    return s


def license_allowed(expression: str, allowed: frozenset[str]) -> bool:
    """Whether an SPDX expression can be satisfied with allowed licences: `A OR B` needs one, `A AND B`
    both; `X WITH exception` counts as X. A malformed expression is not allowed."""
    tokens = SPDX_TOKEN_RE.findall(expression)
    ok = {_canonical(a) for a in allowed}
    pos = 0

    def peek() -> str:
        return tokens[pos].upper() if pos < len(tokens) else ""

    def take() -> str:
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def disjunction() -> bool:
        value = conjunction()
        while peek() == "OR":
            take()
            value = conjunction() or value
        return value

    def conjunction() -> bool:
        value = term()
        while peek() == "AND":
            take()
            value = term() and value
        return value

    def term() -> bool:
        if peek() == "(":
            take()
            value = disjunction()
            if take() != ")":
                raise ValueError("unbalanced")
        elif peek() in ("", ")", "AND", "OR", "WITH"):
            raise ValueError("missing licence")
        else:
            value = _canonical(take()) in ok
        if peek() == "WITH":
            take()
            if peek() in ("", "(", ")", "AND", "OR"):
                raise ValueError("missing exception")
            take()
        return value

    try:
        result = disjunction()
        return result and pos == len(tokens)
    except (ValueError, IndexError):
        return False


def is_license_file(path: str) -> bool:
    """LICENSE, LICENCE.md, COPYING.LESSER, LICENSE-MIT, debian/copyright; not license.py."""
    name = posixpath.basename(path)
    return bool(LICENSE_FILE_RE.match(name)) and language_of(name, b"") in (None, "Markdown", "reStructuredText")


LicenseTree = dict[tuple[str, str], str]  # (repo, folder) -> SPDX expression of the licence files there


def license_tree(files: Iterable[SourceFile]) -> LicenseTree:
    """The licence of every folder that holds licence files; only licence files are read.

    Several licence files in one folder all apply (AND); one that is not recognised counts only
    when none there is, as `LicenseRef-unknown` (a licence no allowlist names). A Debian
    `debian/copyright` speaks for the whole source package, so it is the root's licence when no
    licence file at the root is recognised.
    """
    found: dict[tuple[str, str], set[str]] = {}
    unknown: set[tuple[str, str]] = set()
    debian: dict[str, set[str]] = {}
    for f in files:
        if not is_license_file(f.path):
            continue
        spdx = detect_license(f.data.decode("utf-8", errors="replace"))
        folder = posixpath.dirname(f.path)
        if folder == "debian" and posixpath.basename(f.path) == "copyright":
            if spdx:
                debian.setdefault(f.repo, set()).add(spdx)
        elif spdx:
            found.setdefault((f.repo, folder), set()).add(spdx)
        else:
            unknown.add((f.repo, folder))
    for repo, ids in debian.items():
        if (repo, "") not in found:
            found[(repo, "")] = ids
    tree = {key: _and(sorted(ids)) for key, ids in found.items()}
    for key in unknown - found.keys():
        tree[key] = "LicenseRef-unknown"
    return tree


def nearest_license(f: SourceFile, tree: LicenseTree) -> str | None:
    """The licence of the closest folder above the file that has licence files; None: none has."""
    folder = posixpath.dirname(f.path)
    while True:
        if (f.repo, folder) in tree:
            return tree[(f.repo, folder)]
        if not folder:
            return None
        folder = posixpath.dirname(folder)


def repo_licenses(files: Iterable[SourceFile]) -> dict[str, str | None]:
    """Each repository's licence, from the licence files at its root (None: it has none)."""
    files = list(files)
    tree = license_tree(files)
    return {f.repo: tree.get((f.repo, "")) for f in files}


# -- generated, minified, data -----------------------------------------------------------------
GENERATED_RE = re.compile(
    r"do not edit|auto[- ]?generated|automatically generated|generated automatically|@generated\b"
    r"|this file (?:is|was|has been) generated|changes to this file (?:may|will) (?:cause|be lost)"
    # `# Generated by Django`, `// Generated by the protocol buffer compiler`; not prose about a value
    r"|^[\s#/*;!<>-]*(?:this \w+ (?:is|was|has been) )?generated (?:by|with|from)\b",
    re.M,
)  # on lower-cased text
GENERATED_HINTS = ("generat", "do not edit", "changes to this file")  # every marker holds one of these
GENERATED_NAME_RE = re.compile(
    r"(?:_pb2(?:_grpc)?\.pyi?|\.pb\.(?:go|cc|h|c)|\.pb\.gw\.go|_pb\.(?:js|d\.ts)|\.g\.dart|\.designer\.cs"
    r"|[._]generated\.\w+)$"
)
LOCK_FILES = {
    "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock",
    "Pipfile.lock", "composer.lock", "Gemfile.lock", "go.sum", "uv.lock", "flake.lock",
}  # fmt: skip
MINIFIED_NAME_RE = re.compile(r"[.-]min\.(?:js|mjs|css)$", re.I)
# alpha_fraction counts bytes of the UTF-8 text with `bytes.translate` (C speed, no per-character
# Python): a non-ASCII character counts once, by its lead byte, and as a letter (accented and CJK
# text in comments and strings is prose, not data); continuation bytes do not count at all.
ASCII_LETTERS = bytes(range(ord("A"), ord("Z") + 1)) + bytes(range(ord("a"), ord("z") + 1))
ASCII_SPACE = b" \t\n\r\x0b\x0c"
UTF8_LEAD = bytes(range(0xC0, 0x100))
UTF8_CONTINUATION = bytes(range(0x80, 0xC0))
ENCODED_MIN = 64  # a base64 or hex run this long is encoded data (The Stack v2's encoded-data filter)
_B64_MASK = bytes(0x61 if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "+/") else 0x20 for i in range(256))
HEX_LITERAL_RE = re.compile(rb"0[xX][0-9a-fA-F]+")
HEX_OR_ENCODED_RE = re.compile(rb"[A-Za-z0-9+/]{%d,}|0[xX][0-9a-fA-F]+" % ENCODED_MIN)


def _head(text: str, lines: int = HEAD_LINES) -> str:
    end = -1
    for _ in range(lines):
        end = text.find("\n", end + 1)
        if end < 0:
            return text
    return text[:end]


def generated_reason(path: str, text: str) -> str | None:
    """`minified` for .min.js/.min.css, `auto_generated` for generator outputs, lock files and markers."""
    name = posixpath.basename(path)
    if MINIFIED_NAME_RE.search(name):
        return MINIFIED
    if name in LOCK_FILES or GENERATED_NAME_RE.search(name):
        return AUTO_GENERATED
    head = _head(text).lower()
    if any(m in head for m in GENERATED_HINTS) and GENERATED_RE.search(head):  # substring test first: fast
        return AUTO_GENERATED
    return None


@dataclass(frozen=True)
class TextStats:
    line_count: int
    max_line_length: int  # characters
    mean_line_length: float  # characters per line, newlines not counted
    alpha_fraction: float  # letters outside hex literals and encoded runs / non-whitespace characters
    space_fraction: float  # whitespace / all characters
    content_chars: int  # non-whitespace characters


def _count(data: bytes, chars: bytes) -> int:
    return len(data) - len(data.translate(None, chars))


def text_stats(text: str) -> TextStats:
    """Line and character statistics in a few linear C passes (the rules run on millions of files).

    Hex literals (`0x1f`) and base64/hex runs of ENCODED_MIN+ characters hold letters that are not
    words, so theirs do not count: a table of `0xbe, 0xef` is data though half its characters are letters.
    """
    data = text.encode("utf-8", errors="surrogatepass")
    is_ascii = text.isascii()
    chars = len(data) if is_ascii else len(data) - _count(data, UTF8_CONTINUATION)
    spaces = _count(data, ASCII_SPACE)
    content = chars - spaces
    letters = _count(data, ASCII_LETTERS) + (0 if is_ascii else _count(data, UTF8_LEAD))
    spans = HEX_OR_ENCODED_RE if b"a" * ENCODED_MIN in data.translate(_B64_MASK) else HEX_LITERAL_RE
    letters -= _count(b"".join(spans.findall(data)), ASCII_LETTERS)
    newlines = data.count(b"\n")
    line_count = newlines + (1 if data and not data.endswith(b"\n") else 0)
    return TextStats(
        line_count=line_count,
        max_line_length=max(map(len, text.split("\n"))),
        mean_line_length=(chars - newlines) / max(line_count, 1),
        alpha_fraction=letters / max(content, 1),
        space_fraction=spaces / max(chars, 1),
        content_chars=content,
    )


# -- rules and rows ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CodeRules:
    """Thresholds of the code rules; a 0 (or None, or empty) switches the rule it names off.

    allowed_licenses=None: no licence rule at all (no_license, license_not_allowed off).
    languages=None: every language of the table (a file of no known language still goes).
    """

    allowed_licenses: frozenset[str] | None
    min_bytes: int = 100  # 0: off
    max_bytes: int = 1_000_000  # 0: off
    max_line_length: int = 1000  # 0: off
    max_mean_line_length: float = 100  # 0: off
    min_alpha_fraction: float = 0.25  # 0: off; see TextStats.alpha_fraction
    vendored_dirs: tuple[str, ...] = (
        "vendor", "vendors", "third_party", "third-party", "thirdparty", "3rdparty", "node_modules",
        "bower_components", "external", "externals", "deps", "_vendor", "site-packages", "dist-packages",
    )  # fmt: skip  # (): off; folder names, case-insensitive, at any depth
    languages: frozenset[str] | None = None
    drop_generated: bool = True  # generator markers, generated file names, lock files, .min.js

    @cached_property
    def _vendored(self) -> frozenset[str]:
        return frozenset(d.lower() for d in self.vendored_dirs)

    def is_vendored(self, path: str) -> bool:
        """A folder of the path (not the file name) is a vendored-code folder."""
        return any(part.lower() in self._vendored for part in path.split("/")[:-1])


def _shape_reason(stats: TextStats, rules: CodeRules) -> str | None:
    too_long = (rules.max_line_length and stats.max_line_length > rules.max_line_length) or (
        rules.max_mean_line_length and stats.mean_line_length > rules.max_mean_line_length
    )
    if not too_long:
        return None
    return MINIFIED if stats.space_fraction < MINIFIED_MAX_SPACE_FRACTION else LONG_LINES


def code_row(f: SourceFile, license: str | None, rules: CodeRules, source: str) -> dict:
    """One output row for a source file; `drop_reason` names the first rule that fired (None: kept).

    `license` is the licence the file's repository gives it (`nearest_license`); an SPDX header
    in the file overrides it, and the input's hint stands in when there is neither. Dropped rows
    carry no text: the stage only counts them.
    """
    language = language_of(f.path, f.data[:HEAD_BYTES])
    row: dict = {
        "doc_id": doc_id(source, f"{f.repo}\x1f{f.path}\x1f{f.blob_sha}"),
        "source": source,
        "source_uri": f.origin,
        "parent_ids": [],
        "repo": f.repo,
        "path": f.path,
        "language": language,
        "license": license or f.license_hint,
        "size_bytes": len(f.data),
        "blob_sha": f.blob_sha,
        "text": None,
        "text_chars": None,
        "line_count": None,
        "max_line_length": None,
        "alpha_fraction": None,
        "drop_reason": None,
    }

    def drop(reason: str) -> dict:
        row["drop_reason"] = reason
        return row

    if b"\0" in f.data[:BINARY_SNIFF_BYTES]:
        return drop(BINARY)
    try:
        text = f.data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return drop(INVALID_ENCODING)
    if len(f.data) < rules.min_bytes:
        return drop(TOO_SMALL)
    if rules.max_bytes and len(f.data) > rules.max_bytes:
        return drop(TOO_LARGE)
    if rules.is_vendored(f.path):
        return drop(VENDORED)
    if language is None:
        return drop(UNKNOWN_LANGUAGE)
    if rules.languages is not None and language not in rules.languages:
        return drop(LANGUAGE_NOT_ALLOWED)
    row["license"] = spdx_header(text) or row["license"]
    if rules.allowed_licenses is not None:
        if row["license"] is None:
            return drop(NO_LICENSE)
        if not license_allowed(row["license"], rules.allowed_licenses):
            return drop(LICENSE_NOT_ALLOWED)
    if rules.drop_generated and (reason := generated_reason(f.path, text)):
        return drop(reason)
    stats = text_stats(text)
    row.update(
        line_count=stats.line_count,
        max_line_length=stats.max_line_length,
        alpha_fraction=round(stats.alpha_fraction, 4),
        text_chars=len(text),
    )
    if reason := _shape_reason(stats, rules):
        return drop(reason)
    if rules.min_alpha_fraction and stats.content_chars and stats.alpha_fraction < rules.min_alpha_fraction:
        return drop(DATA_FILE)
    row["text"] = text
    return row
