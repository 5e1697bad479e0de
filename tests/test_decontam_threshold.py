"""The decontamination default holds on a set with known answers (issue 18, item 17): lightly
paraphrased leaks of benchmark-like items, hard negatives on the items' own pages (shared opening,
a quoted fragment), clean pages. Built from the sample (bench/paraphrase_set.py)."""

from __future__ import annotations

import sys

import pytest
from conftest import ROOT

from phiflow.recipe import DecontaminateParams, load_recipe

sys.path.insert(0, str(ROOT / "bench"))
from bench_decontam_threshold import score
from paraphrase_set import build


@pytest.fixture(scope="module")
def known_answers():
    return build()


def test_the_default_catches_light_paraphrases_and_flags_no_negative(known_answers) -> None:
    items, cases = known_answers
    default = DecontaminateParams().overlap_threshold
    caught, hard, clean = score(items, cases, default)
    old_caught, _, _ = score(items, cases, 0.5)  # the recipes' value before the measurement
    assert hard == 0 and clean == 0
    assert caught >= 2 * old_caught  # 0.5 missed most light paraphrases
    assert score(items, cases, default / 2)[1] > 0  # the margin is real: half the default flags negatives
    for name in ("demo", "phi4"):
        assert load_recipe(ROOT / "recipes" / f"{name}.yaml").stages.decontaminate.overlap_threshold == default


def test_the_set_has_the_answers_it_claims(known_answers) -> None:
    items, cases = known_answers
    assert len(items) == 120 and sum(c.leak for c in cases) == 120
    for c in cases:
        if c.leak:
            assert items[c.item] not in c.text  # paraphrased, not copied
        elif c.item >= 0:
            assert " ".join(items[c.item].split()[:13]) not in c.text  # no long n-gram of its item
