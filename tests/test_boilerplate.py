"""Boilerplate-aware shingling: a site's template lines are left out of the MinHash shingles, so templated
pages are compared on their content. The pure line functions, then the dedup stage on a built set of
templated sites (bench/templated_set.py) with the option off and on."""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pytest
from conftest import ROOT

from phiflow.recipe import Recipe
from phiflow.records import boilerplate
from phiflow.records.ngrams import words
from phiflow.storage import Lake
from spark_jobs import dedup
from spark_jobs.engine.stage_io import StageContext

sys.path.insert(0, str(ROOT / "bench"))
from bench_dedup_templated import SNAP, clusters_of, commit_pages, with_dedup
from templated_set import build, score

TEMPLATE = ["Home of the example site and all its many pages", "Copyright 2024 the example site, all rights kept"]


def test_sites_and_line_keys() -> None:
    assert boilerplate.site_of("https://www.Example.org/a?b=1") == "example.org"
    assert boilerplate.site_of(None) == "" and boilerplate.site_of("warc://x") == ""
    text = "\n".join([TEMPLATE[0], "Hi", TEMPLATE[1]])
    keys = boilerplate.line_keys("https://example.org/1", text)
    assert len(keys) == 2  # "Hi" is too short to be a key
    # the same line on another site is another key; normalisation makes case and spacing irrelevant
    assert set(keys).isdisjoint(boilerplate.line_keys("https://other.org/1", text))
    assert set(keys) == set(boilerplate.line_keys("http://www.example.org/2", text.upper().replace(" ", "  ")))
    assert len(boilerplate.line_keys(None, text)) == 0


def test_one_tokenization_gives_the_line_keys_and_the_words() -> None:
    """The stage hashes a page's shingles and its lines from one tokenization: the words of its lines, in
    order, are the words of its text (multilingual pages, combining marks and a final sigma at a line's end
    included)."""
    pages = [p.text for p in build(sites=3, pages_per_site=4, standalone=6)]
    pages += ["ΟΔΟΣ\nΣ Αθήνα", "e\u0301te\u0301\n\u0301x", "naïve ﬁle\n\n  ｆｕｌｌ width\t tab", "", "\n\n"]
    for text in pages:
        keys, got = boilerplate.keys_and_words("https://example.org/x", text)
        assert got == words(text)
        assert np.array_equal(keys, boilerplate.line_keys("https://example.org/x", text))
    assert boilerplate.keys_and_words(None, pages[0])[1] == words(pages[0])


def test_strip_removes_template_lines_and_keeps_a_page_that_would_be_empty() -> None:
    url = "https://example.org/p"
    content = "the page's own words about installing the system on a small machine with little memory"
    keys = np.sort(boilerplate.line_keys(url, "\n".join(TEMPLATE)))
    page = "\n".join([TEMPLATE[0], content, TEMPLATE[1]])
    assert boilerplate.strip(url, page, keys, min_words=10) == content
    assert boilerplate.strip("https://other.org/p", page, keys, min_words=10) == page  # not that site's template
    short = "\n".join([TEMPLATE[0], "just a few words here", TEMPLATE[1]])
    assert boilerplate.strip(url, short, keys, min_words=10) == short  # all template: compared whole
    assert boilerplate.strip(url, page, np.empty(0, np.int64), min_words=10) == page


def reference_signatures(pages: list, params) -> dict[str, list[int]]:
    """Boilerplate-aware signatures the slow way: count every line key per site over all pages, keep those
    on `boilerplate_min_docs` pages and that share of the site's pages, strip, hash each page alone."""
    mh = dedup.hasher(params)
    site_pages = Counter(boilerplate.site_of(p.url) for p in pages)
    lines = Counter((boilerplate.site_of(p.url), int(k)) for p in pages for k in boilerplate.line_keys(p.url, p.text))
    need, share = params.boilerplate_min_docs, params.boilerplate_min_share
    keys = np.array(sorted(k for (site, k), n in lines.items() if need and n >= need and n >= site_pages[site] * share),
                    dtype=np.int64)
    out = {}
    for i, p in enumerate(pages):
        _, sig, _ = mh.batch([p.text], [boilerplate.strip(p.url, p.text, keys, params.boilerplate_min_words)])
        out[f"d{i:07d}"] = sig.to_pylist()[0]
    return out


@pytest.mark.spark
def test_templated_pages_are_compared_on_their_content(spark, test_recipe: Recipe, tmp_path) -> None:
    pages = build(sites=12, pages_per_site=6, standalone=20)
    off = with_dedup(test_recipe, boilerplate_min_docs=0, cross_snapshot=False)
    on = with_dedup(off, boilerplate_min_docs=5)
    got = {}
    for name, recipe in (("off", off), ("on", on)):
        lake = Lake(str(tmp_path / name))
        commit_pages(spark, recipe, lake, pages)
        m = dedup.run(spark, StageContext(recipe=recipe, source="web", partition=dict(SNAP), lake=lake))
        stored = lake.read_table(lake.require("web.minhash", SNAP), columns=["doc_id", "signature"]).to_pylist()
        expected = reference_signatures(pages, recipe.stages.dedup)
        assert {r["doc_id"]: r["signature"] for r in stored} == {r["doc_id"]: expected[r["doc_id"]] for r in stored}
        got[name] = score(pages, clusters_of(lake, len(pages)), recipe.stages.dedup.threshold,
                          dedup.hasher(recipe.stages.dedup).shingles), m
    (p_off, _, removed_off, should), _ = got["off"]
    (p_on, r_on, removed_on, _), m_on = got["on"]
    assert should > 0 and m_on.counters["boilerplate_lines"] > 0 and m_on.counters["boilerplate_pages"] > 0
    assert m_on.counters["boilerplate_sites"] == 12  # the standalone pages' sites have one page each
    # off, the shared template merges pages of one site whose content differs (seen: 17 removed where the
    # content calls for 13, precision 0.76)
    assert p_off < 0.85 and removed_off > should
    # on, they are compared on their content: the removals are the near copies, and those are still found
    # (seen: 14 removed, precision 0.93, recall 1.0)
    assert p_on >= 0.9 and r_on >= 0.9 and removed_on < removed_off
