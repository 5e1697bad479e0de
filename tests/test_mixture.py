"""Mixture arithmetic, checked against the Phi-4 report's Table 5."""

from __future__ import annotations

import dataclasses

import pytest

from phiflow.mixture import (
    PHI4_MIDTRAIN_TOKENS,
    PHI4_PRETRAIN_SOURCES,
    PHI4_PRETRAIN_TOKENS,
    MixtureError,
    SourceSpec,
    compute_mixture,
    midtraining_mixture,
)

TABLE5_EPOCHS = {"web": 1.2, "web_rewrites": 5.2, "synthetic": 13.8, "code": 2.4, "acquisitions": 1.7}


def test_phi4_table5_epochs_match_report() -> None:
    mix = compute_mixture(PHI4_PRETRAIN_SOURCES, PHI4_PRETRAIN_TOKENS)
    for name, epochs in TABLE5_EPOCHS.items():
        assert round(mix.by_name(name).epochs, 1) == epochs, name
    assert sum(s.tokens for s in mix.sources) == PHI4_PRETRAIN_TOKENS
    assert mix.by_name("synthetic").tokens == 4 * 10**12
    assert "synthetic" in mix.report()


def test_shares_must_sum_to_one() -> None:
    bad = [SourceSpec("web", 0.5, 100), SourceSpec("code", 0.4, 100)]
    with pytest.raises(MixtureError, match=r"sum to 0.9"):
        compute_mixture(bad, 1000)


def test_max_epochs_names_the_source() -> None:
    sources = [dataclasses.replace(s, max_epochs=12.0) for s in PHI4_PRETRAIN_SOURCES]
    with pytest.raises(MixtureError, match=r"'synthetic'.*13.79 epochs exceeds max_epochs=12"):
        compute_mixture(sources, PHI4_PRETRAIN_TOKENS)


def test_bad_source_fields() -> None:
    with pytest.raises(MixtureError, match=r"'web': share 1.5"):
        SourceSpec("web", 1.5, 10)
    with pytest.raises(MixtureError, match=r"'web'.*appears more than once"):
        compute_mixture([SourceSpec("web", 0.5, 10), SourceSpec("web", 0.5, 10)], 100)
    with pytest.raises(MixtureError, match=r"'code': share 0.5 but no unique tokens"):
        compute_mixture([SourceSpec("web", 0.5, 10), SourceSpec("code", 0.5, 0)], 100)


def test_blend_splits_share_over_shards_by_tokens() -> None:
    sources = [
        SourceSpec("web", 0.75, 300, shards=(("/d/web_0", 100), ("/d/web_1", 200))),
        SourceSpec("code", 0.25, 50, shards=(("/d/code_0", 50),)),
    ]
    blend = compute_mixture(sources, 1000).blend()
    assert blend == [(0.25, "/d/web_0"), (0.5, "/d/web_1"), (0.25, "/d/code_0")]


def test_midtraining_is_30_long_70_replay() -> None:
    long_ctx = [SourceSpec("long_books", 0.5, 60 * 10**9), SourceSpec("long_synth", 0.5, 40 * 10**9)]
    mix = midtraining_mixture(PHI4_PRETRAIN_SOURCES, long_ctx, PHI4_MIDTRAIN_TOKENS)
    replay = sum(s.share for s in mix.sources if s.name.startswith("replay:"))
    assert replay == pytest.approx(0.7)
    assert mix.by_name("replay:synthetic").share == pytest.approx(0.28)
    assert mix.by_name("long_books").tokens == 37_500_000_000
    assert mix.by_name("long_synth").epochs == pytest.approx(37.5 / 40)
