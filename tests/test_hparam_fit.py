"""phiflow.hparam_fit: lr / batch size interpolated from short runs, on points drawn from known loss surfaces."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from phiflow.hparam_fit import fit_lr_batch, markdown, recipe_snippet

LRS = (5e-4, 1e-3, 2e-3, 4e-3, 8e-3)
BATCHES = (8, 16, 32)


def surface(lr: float, bs: float, lr_opt: float = 2e-3, bs_opt: float = 16) -> float:
    dx, dy = math.log(lr) - math.log(lr_opt), math.log(bs) - math.log(bs_opt)
    return 3 + 0.5 * dx * dx + 0.3 * dy * dy + 0.1 * dx * dy


def sweep(noise: float, *, seed: int = 1, batches=BATCHES, loss=surface) -> list[dict]:
    rng = np.random.default_rng(seed)
    grid = [(lr, bs) for lr in LRS for bs in batches]
    return [{"point": f"p{i}", "lr": lr, "global_batch_size": bs, "loss": loss(lr, bs) + rng.normal(0, noise)}
            for i, (lr, bs) in enumerate(grid)]


def log_width(fit: dict) -> float:
    lo, hi = fit["lr_interval"]
    return math.log(hi / lo)


def test_surface_recovers_lr_and_batch():
    fit = fit_lr_batch(sweep(0.01))
    assert fit["convex"] and not fit["extrapolated"] and fit["reason"] is None
    assert fit["global_batch_size"] == 16 and fit["batch_from"] == "surface"
    assert fit["lr"] == pytest.approx(2e-3, rel=0.1)  # the true lr* at batch 16
    assert fit["loss"] == pytest.approx(3.0, abs=0.02)
    assert fit["points_used"] == 15 and fit["dropped"] == [] and fit["r2"] > 0.99
    lo, hi = fit["lr_interval"]
    assert lo <= fit["lr"] <= hi and fit["log_lr_sd"] > 0


def test_interval_covers_truth_and_shrinks_with_noise():
    # a 68% interval misses the truth about a third of the time, so one sweep proves little: count the
    # sweeps (different noise draws) whose interval contains the true lr* = 2e-3
    fits = [fit_lr_batch(sweep(0.03, seed=s)) for s in range(60)]
    covered = sum(f["lr_interval"][0] <= 2e-3 <= f["lr_interval"][1] for f in fits)
    assert 0.5 <= covered / len(fits) <= 0.85
    quiet, noisy = fit_lr_batch(sweep(0.005, seed=2)), fit_lr_batch(sweep(0.05, seed=2))
    assert quiet["lr_interval"][0] <= 2e-3 <= quiet["lr_interval"][1]  # one draw of the ~2/3 that cover
    assert log_width(quiet) < log_width(noisy) / 4  # 10x less noise: a much narrower interval
    assert quiet["log_lr_sd"] < noisy["log_lr_sd"] / 4


def test_two_batch_sizes_choose_a_measured_one():
    fit = fit_lr_batch(sweep(0.01, batches=(8, 16)))
    assert "y^2" not in fit["terms"] and len(fit["terms"]) == 5
    assert fit["batch_from"] == "measured" and fit["global_batch_size"] == 16
    assert [r["global_batch_size"] for r in fit["per_batch"]] == [8, 16]
    assert fit["lr"] == pytest.approx(2e-3, rel=0.1)


def test_one_batch_size_fits_lr_only():
    pts = [p for p in sweep(0.005) if p["global_batch_size"] == 16]
    fit = fit_lr_batch(pts)
    assert fit["terms"] == ["1", "x", "x^2"] and fit["global_batch_size"] is None
    assert fit["lr"] == pytest.approx(2e-3, rel=0.1)
    snippet = recipe_snippet(fit)
    assert "global_batch_size" not in snippet
    assert yaml.safe_load(snippet) == {"training": {"pretrain": {"optimizer": {"lr": float(f"{fit['lr']:.2e}")}}}}


def test_optimum_beyond_the_grid_is_flagged():
    pts = sweep(0.002, batches=(16,), loss=lambda lr, bs: surface(lr, bs, lr_opt=5e-2))
    fit = fit_lr_batch(pts)
    assert fit["extrapolated"] and fit["lr"] > max(LRS)
    assert fit["lr"] == pytest.approx(5e-2, rel=0.25)
    assert "edge of the grid" in fit["reason"] and "extend the sweep" in fit["reason"]
    assert "edge of the grid" in recipe_snippet(fit) and "edge of the grid" in markdown(fit)


def test_concave_loss_proposes_nothing():
    # decreasing over the whole grid and bending down: no basin to interpolate
    pts = sweep(0.002, batches=(16,), loss=lambda lr, bs: 4 - 0.2 * (math.log(lr) - math.log(1e-4)) ** 2)
    fit = fit_lr_batch(pts)
    assert not fit["convex"] and fit["lr"] is None and fit["lr_interval"] is None
    assert "not convex" in fit["reason"]
    snippet = recipe_snippet(fit)
    assert snippet.startswith("# no lr proposed") and yaml.safe_load(snippet) is None
    assert "proposal" not in markdown(fit) and "not convex" in markdown(fit)


def test_non_finite_losses_are_dropped_and_too_few_points_give_none():
    pts = sweep(0.01)
    pts[3]["loss"], pts[7]["loss"], pts[9]["loss"] = math.nan, math.inf, None
    fit = fit_lr_batch(pts)
    assert fit["dropped"] == ["p3", "p7", "p9"] and fit["points_used"] == 12
    assert fit["lr"] == pytest.approx(2e-3, rel=0.1)
    assert "p3, p7, p9" in markdown(fit)
    one_bs = sweep(0.01, batches=(16,))
    assert fit_lr_batch(one_bs[:2]) is None  # 2 distinct lrs cannot make a parabola
    one_bs[2]["loss"] = math.nan
    assert fit_lr_batch(one_bs[:3]) is None  # 3 lrs, one diverged
    assert fit_lr_batch(sweep(0.01, batches=(8, 16))[:5]) is None  # a surface needs 6 points, even with 5 terms
    assert fit_lr_batch(sweep(0.01, batches=(8, 16))[:6]) is not None


def test_snippet_round_trips_through_yaml():
    fit = fit_lr_batch(sweep(0.01))
    snippet = recipe_snippet(fit)
    pre = yaml.safe_load(snippet)["training"]["pretrain"]
    assert pre["global_batch_size"] == fit["global_batch_size"] == 16
    assert isinstance(pre["optimizer"]["lr"], float)
    assert pre["optimizer"]["lr"] == float(f"{fit['lr']:.2e}")
    assert "fitted from 15 short runs" in snippet and "68% interval" in snippet
    md = markdown(fit)
    assert f"```yaml\n{snippet}```" in md and "x = ln(lr), y = ln(global_batch_size)" in md


def test_same_seed_same_result():
    pts = sweep(0.03)
    assert fit_lr_batch(pts, seed=7) == fit_lr_batch(pts, seed=7)
    assert fit_lr_batch(pts, seed=7)["lr_interval"] != fit_lr_batch(pts, seed=8)["lr_interval"]
