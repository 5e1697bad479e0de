"""The dashboard's data and page equal what the manifests say, and absent datasets degrade to a note."""

from __future__ import annotations

import json
import re
from collections import Counter

from dashboard_fixtures import commit_all, manifest, pipeline_manifests

from phiflow.dashboard import build, build_from_lake, render


def cells(page: str) -> dict[str, str]:
    """`data-testid` -> the text right after the tag (what a reader sees in that cell)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"data-testid='([^']+)'[^>]*>([^<]*)<", page)}


def test_funnel_languages_topics_contamination_equal_the_manifests(lake) -> None:
    ms = pipeline_manifests(3, seed=1)
    commit_all(lake, ms)
    d = build_from_lake(lake)
    assert d.partitions == 18  # 3 intervals x (5 document stages + the quality stage's rejected rows)
    by = {(m.dataset, m.key): m for m in ms}
    steps = d.funnel["web"]["snapshot=CC-MAIN-2000-02"]
    assert [s.dataset for s in steps] == ["web.extracted", "web.langid", "web.quality", "web.dedup", "web.clean"]
    for s in steps:
        m = by[(s.dataset, "snapshot=CC-MAIN-2000-02")]
        assert (s.read, s.kept, s.dropped) == (m.counters["read"], m.row_count, m.counters["dropped"])
    totals = {s.dataset: s for s in d.totals["web"]}
    for ds in totals:
        assert totals[ds].kept == sum(m.row_count for m in ms if m.dataset == ds)
        want: Counter[str] = Counter()
        for m in ms:
            if m.dataset == ds:
                want.update(m.counters["dropped"])
        assert totals[ds].dropped == dict(want)
    langs: Counter[str] = Counter()
    for m in ms:
        langs.update(m.counters.get("languages", {}))
    assert d.languages == {"web": dict(langs)}
    assert sum(d.topics["web"]["after"].values()) == totals["web.quality"].kept
    cont = d.contamination["web"]
    removed = sum(n for m in ms if m.dataset == "web.clean" for n in m.counters["dropped"].values())
    assert cont["removed"] == removed and cont["documents"] == totals["web.clean"].read
    assert cont["by_benchmark"]["arith"] == totals["web.clean"].dropped["contaminated_ngram13"]

    page = render(d)
    ids = cells(page)
    assert ids["partitions"].startswith("18 committed partitions")
    assert ids["funnel:web:all intervals:web.extracted:read"] == str(sum(m.counters["read"] for m in ms
                                                                          if m.dataset == "web.extracted"))
    march = by["web.clean", "snapshot=CC-MAIN-2000-03"]
    assert ids["funnel:web:snapshot=CC-MAIN-2000-03:web.clean:kept"] == str(march.row_count)
    assert ids["drops:web:web.dedup:exact_duplicate"] == str(totals["web.dedup"].dropped["exact_duplicate"])
    assert ids["contamination:web:removed"] == str(removed)
    assert ids["rows:web.langid"] == str(totals["web.langid"].kept)
    assert "no mix partitions" in page and "no training metrics" in page
    json.dumps(d.to_dict())  # the /data.json route serves this


def test_empty_lake_and_partial_pipeline_degrade(lake) -> None:
    page = render(build_from_lake(lake))
    for note in ("no committed document partitions yet", "no langid partitions", "no quality partitions",
                 "no decontamination partitions", "no mix partitions", "no training metrics"):
        assert note in page
    only = [m for m in pipeline_manifests(2) if m.dataset == "web.extracted"]
    d = build(only)
    assert [s.dataset for s in d.totals["web"]] == ["web.extracted"] and not d.languages and not d.contamination
    assert "Funnel: web" in render(d)


def test_mixture_training_curves_topics_and_escaping() -> None:
    rows = [{"run": "pretrain", "source": "web", "share": 0.3, "unique_tokens": 1000, "tokens": 3000, "epochs": 3.0},
            {"run": "pretrain", "source": "synthetic", "share": 0.7, "unique_tokens": 7000, "tokens": 7000,
             "epochs": 1.0}]
    mix = manifest("blend", {"recipe": "r1"}, "mix", 0, 2, {}, sources=rows)
    losses = [4.0, 3.1, 2.5]
    pre = manifest("checkpoints.pretrain", {"recipe": "r1"}, "pretrain", 0, 3, {}, losses=losses, final_step=3,
                   final_loss=2.5, valid_perplexity=11.0)
    mid = manifest("checkpoints.midtrain", {"recipe": "r1"}, "midtrain", 0, 2, {}, losses=[2.4, 2.2], final_step=2,
                   final_loss=2.2, valid_perplexity=9.0)
    hostile = manifest("web.extracted", {"snapshot": "<b>x</b>"}, "commoncrawl_extract", 5, 4,
                       {"<script>alert(1)</script>": 1})
    rules_only = manifest("wiki.quality", {"dump": "d"}, "quality", 5, 5, {}, topics_before={"none": 5},
                          topics_after={"none": 5})

    d = build([mix, pre, mid, hostile, rules_only])
    page = render(d)
    ids = cells(page)
    assert ids["mix:recipe=r1:pretrain:web:share"] == "30.0%"
    assert ids["mix:recipe=r1:pretrain:synthetic:share"] == "70.0%"
    assert [r["name"] for r in d.training] == ["midtrain recipe=r1", "pretrain recipe=r1"]
    assert d.training[1]["steps"] == [(1, 4.0), (2, 3.1), (3, 2.5)]
    assert "data-testid='curve:pretrain recipe=r1'" in page and page.count("<polyline") == 2
    assert "wiki" in ids["topics-unscored"] and "topic:wiki" not in page  # no bar of "none"
    assert "<script>" not in page and "&lt;script&gt;" in page and "<b>x</b>" not in page


def test_the_summary_table_is_aligned_with_long_dataset_names() -> None:
    from phiflow.summary import stage_table

    ms = [*pipeline_manifests(1), manifest("tokens.synthetic.long_context_qa", {"run": "r"}, "tokenize", 9, 9, {})]
    lines = stage_table(ms).splitlines()
    stage_at, secs_end = lines[0].index("stage"), lines[0].index("seconds") + len("seconds")
    assert all(line[secs_end - 1].isdigit() and line[secs_end] == " " for line in lines[1:])  # numbers line up
    assert all(line[stage_at - 1] == " " and line[stage_at] != " " for line in lines)  # no name runs into it
    assert lines[-1].startswith("tokens.synthetic.long_context_qa tokenize")
