"""Boilerplate-aware shingling: a site's template lines are left out of the MinHash shingles, so templated
pages are compared on their content. The pure line functions, then the dedup stage on a built set of
templated sites (bench/templated_set.py) with the option off and on."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT

from phiflow.recipe import Recipe
from phiflow.records import boilerplate
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
        got[name] = score(pages, clusters_of(lake, len(pages)), recipe.stages.dedup.threshold,
                          dedup.hasher(recipe.stages.dedup).shingles), m
    (p_off, _, removed_off, should), _ = got["off"]
    (p_on, r_on, removed_on, _), m_on = got["on"]
    assert should > 0 and m_on.counters["boilerplate_lines"] > 0
    # off, the shared template merges pages of one site whose content differs (seen: 17 removed where the
    # content calls for 13, precision 0.76)
    assert p_off < 0.85 and removed_off > should
    # on, they are compared on their content: the removals are the near copies, and those are still found
    # (seen: 14 removed, precision 0.93, recall 1.0)
    assert p_on >= 0.9 and r_on >= 0.9 and removed_on < removed_off
