"""Quality rules on real text and a planted set: binary, mojibake, noise and repeated boilerplate
must go, clean documents of several languages must stay; each rule can be switched off; the
classifier metrics separate a real model from a constant or random one."""

from __future__ import annotations

import bz2
import json
import random

import pytest
from wiki_fixtures import EXPECTED, WIKI

from phiflow.recipe import HeuristicRules, QualityParams, QualityTrainParams, WikipediaExtractParams
from phiflow.records.quality_classifier import binary_metrics, in_holdout, label_probs, roc_auc, train
from phiflow.records.quality_rules import drop_reason
from phiflow.records.wikitext import (
    BrokenPage,
    StreamError,
    clean_page,
    decompress_streams,
    index_path,
    iter_pages,
    parse_index,
    read_header,
    stream_ranges,
)
from spark_jobs.wikipedia_extract import clean_config

P = QualityParams()


def wiki_docs() -> list[dict]:
    """Clean article texts of the four sample dumps, through the extractor's pure functions."""
    cfg, docs = clean_config(WikipediaExtractParams()), []
    labels = {
        (x["wiki"], x["page_id"]): x["source"]
        for x in map(json.loads, (WIKI / "labels.jsonl").read_text().splitlines())
    }
    for name, d in EXPECTED["dumps"].items():
        data = (WIKI / d["dump"]).read_bytes()
        offsets = parse_index(bz2.decompress((WIKI / index_path(d["dump"])).read_bytes()).decode().splitlines())
        site = read_header(data[: offsets[0][0]])
        for start, end, _ in stream_ranges(offsets, len(data)):
            try:
                xml = decompress_streams(data[start:end])
            except StreamError:
                continue
            for page in iter_pages(site, xml):
                if not isinstance(page, BrokenPage):
                    text, reason = clean_page(page, site, cfg)
                    if reason is None:
                        docs.append(
                            {
                                "id": f"{name}:{page.page_id}",
                                "text": text,
                                "language": site.language,
                                "source": labels.get((name, page.page_id)),
                            }
                        )
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return wiki_docs()


def planted(clean: list[dict]) -> dict[str, str]:
    rng = random.Random(7)
    fr = next(d["text"] for d in clean if d["language"] == "fr" and len(d["text"]) > 2000)[:3000]
    en = next(d["text"] for d in clean if d["language"] == "en" and len(d["text"]) > 2000)[:3000]
    return {
        "binary": bytes(rng.randrange(256) for _ in range(4000)).decode("latin-1"),
        "binary_in_text": en[:1500]
        + "".join(chr(rng.choice([0, 1, 2, 3, 0xFFFD, 0xE000])) for _ in range(80))
        + en[1500:],
        "mojibake_fr": fr.encode("utf-8").decode("cp1252", errors="replace"),
        "mojibake_ru": "Установка Debian с компакт-диска выполняется так. " * 3
        + en[:1000].encode().decode("latin-1").replace("e", "Ã©"),
        "noise": "".join(
            rng.choice("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/ ") for _ in range(3000)
        ),
        "boilerplate": "\n".join(
            ["Home | About | Contact", "Subscribe to our newsletter for the latest deals!", "Click here to read more."]
            * 60
        ),
        "lorem": en[:800] + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.\n" + en[800:1600],
        "cookie_wall": "\n".join(
            [
                "We use cookies to improve your experience.",
                "Please enable JavaScript to continue.",
                "Read our privacy policy and terms of use.",
            ]
            * 5
            + [en[:400]]
        ),
    }


def test_planted_corruption_is_dropped_and_clean_languages_survive(docs) -> None:
    for name, text in planted(docs).items():
        lang = "ru" if name.endswith("ru") else ("fr" if name.endswith("fr") else "en")
        assert drop_reason(text, lang, P.outliers, P.rules) is not None, name
    kept: dict[str, list[bool]] = {}
    for d in docs:
        kept.setdefault(d["language"], []).append(drop_reason(d["text"], d["language"], P.outliers, P.rules) is None)
    assert set(kept) == {"en", "de", "fr", "ja"}
    for lang, flags in kept.items():
        assert sum(flags) / len(flags) >= 0.75, (lang, sum(flags), len(flags))


def test_reasons_name_the_rule_and_rules_switch_off(docs) -> None:
    plant = planted(docs)
    assert drop_reason(plant["binary"], "en", P.outliers, P.rules) == "outlier:binary"
    assert drop_reason(plant["mojibake_fr"], "fr", P.outliers, P.rules) == "outlier:mojibake"
    assert drop_reason(plant["boilerplate"], "en", P.outliers, P.rules).startswith(
        ("outlier:compression_low", "gopher")
    )
    assert drop_reason(plant["lorem"], "en", P.outliers, P.rules) == "c4:lorem_ipsum"
    off = HeuristicRules(c4={"enabled": False})
    assert drop_reason(plant["lorem"], "en", P.outliers, off) is None
    no_outliers = P.outliers.model_copy(update={"enabled": False})
    assert drop_reason(plant["binary"], "en", no_outliers, P.rules) != "outlier:binary"
    assert drop_reason(plant["mojibake_fr"], "fr", no_outliers, P.rules) != "outlier:mojibake"
    short = "A short line.\nA second one.\nAnother short line that says little."
    assert drop_reason(short, "en", P.outliers, P.rules) == "gopher_quality:too_few_words"
    assert (
        drop_reason(
            short,
            "en",
            P.outliers,
            HeuristicRules(gopher_quality={"enabled": False}, gopher_repetition={"enabled": False}),
        )
        is None
    )


def test_auc_is_rank_based() -> None:
    assert roc_auc([True, False, True, False], [0.9, 0.1, 0.8, 0.2]) == 1.0
    assert roc_auc([True, False, True, False], [0.5] * 4) == 0.5
    assert roc_auc([True, False], [0.1, 0.9]) == 0.0


def test_classifier_beats_constant_and_random_scores_on_held_out_docs(docs) -> None:
    """Label derivable from the source: Python documentation (code) vs installation guide."""
    en = [d for d in docs if d["language"] == "en" and d["source"]]
    train_docs = [d for d in en if not in_holdout(d["id"], 0.3)]
    held = [d for d in en if in_holdout(d["id"], 0.3)]
    model = train([d["text"] for d in train_docs], [d["source"] for d in train_docs], QualityTrainParams())
    y = [d["source"] == "python-doc" for d in held]
    scores = [p.get("python-doc", 0.0) for p in label_probs(model, [d["text"] for d in held], 20_000)]
    m = binary_metrics(y, scores)
    rng = random.Random(0)
    assert 10 <= m["positives"] <= m["n"] - 10
    assert m["auc"] >= 0.9, m  # a ranking no constant or random scorer reaches
    assert {"precision", "recall"} <= set(m)
    assert binary_metrics(y, [0.7] * len(y))["auc"] == 0.5
    assert abs(binary_metrics(y, [rng.random() for _ in y])["auc"] - 0.5) < 0.25
