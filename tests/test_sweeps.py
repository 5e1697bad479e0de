"""Sweep expansion and validation (bad points rejected with the field named), report joining on real
manifests in a lake, and the lr fit across model sizes. No Spark, no Airflow, no training."""

from __future__ import annotations

import json
import math
import re

import pytest

from phiflow.recipe import RecipeError, SweepError, load_recipe, parse_recipe, sweep_point_ref, sweep_points
from phiflow.schema import TRAIN_STEPS
from training import sweep_report

DEMO = "recipes/demo.yaml"
FINAL_MIX = "web:0.15/web_rewrites:0.15/synthetic:0.4/code:0.2/acquired:0.1"  # the demo sweep's last point


def with_sweep(name: str = "s", **sweep):
    data = load_recipe(DEMO).model_dump(mode="json")
    data["sweeps"] = [{"name": name, **sweep}]
    return parse_recipe(data, load_recipe(DEMO).path)


def mix_sweep():
    """The demo recipe with a mixture sweep of three points, web share down, synthetic up."""
    return with_sweep("mix", pretrain={"steps": 5, "parallel": {"tp": 1}, "checkpoint_interval": 0},
                      axes={"mixture": [{"web": 0.45, "web_rewrites": 0.15, "synthetic": 0.10, "code": 0.20,
                                         "acquired": 0.10},
                                        {"web": 0.30, "web_rewrites": 0.15, "synthetic": 0.25, "code": 0.20,
                                         "acquired": 0.10},
                                        {"web": 0.15, "web_rewrites": 0.15, "synthetic": 0.40, "code": 0.20,
                                         "acquired": 0.10}]})


def test_demo_sweep_expands_into_point_recipes() -> None:
    recipe = mix_sweep()
    points = sweep_points(recipe, "mix")
    assert [p.id for p, _ in points] == ["p0", "p1", "p2"]
    for p, r in points:
        assert r.name == p.recipe_name == f"demo_mix_{p.id}" and r.sweeps == []
        assert {s.name: s.share for s in r.mixture.sources} == p.values["mixture"]
        assert r.training.pretrain.steps == 5 and r.training.pretrain.parallel.tp == 1
        assert r.training.pretrain.model == recipe.training.pretrain.model  # the base run otherwise
    demo = load_recipe(DEMO)
    ref = sweep_point_ref(str(demo.path), "lr", "p2")
    assert load_recipe(ref).model_dump() == sweep_points(demo, "lr")[2][1].model_dump()


def test_grid_is_the_product_of_the_axes() -> None:
    r = with_sweep(pretrain={"parallel": {"tp": 1}}, axes={"lr": [1e-3, 3e-3], "global_batch_size": [8, 16],
                                                           "model": [{"num_layers": 2}]})
    pts = sweep_points(r, "s")
    assert [p.values for p, _ in pts] == [{"lr": lr, "global_batch_size": b, "model": {"num_layers": 2}}
                                          for lr in (1e-3, 3e-3) for b in (8, 16)]
    assert [(x.training.pretrain.optimizer.lr, x.training.pretrain.global_batch_size,
             x.training.pretrain.model.num_layers) for _, x in pts][-1] == (3e-3, 16, 2)


def test_epochs_axis_sets_the_share_of_the_source() -> None:
    r = with_sweep(axes={"epochs": {"source": "synthetic", "unique_tokens": 480, "values": [2, 4]}})
    total = 30 * 8 * 64
    for p, x in sweep_points(r, "s"):
        shares = {s.name: s.share for s in x.mixture.sources}
        assert shares["synthetic"] == pytest.approx(p.values["epochs"] * 480 / total)
        assert sum(shares.values()) == pytest.approx(1)
        subsample = {s.name: s.subsample_tokens for s in x.mixture.sources}
        # the mix stage repeats one fixed 480-token subsample
    assert subsample == {"web": None, "web_rewrites": None, "synthetic": 480, "code": None, "acquired": None}


@pytest.mark.parametrize(("axes", "pretrain", "field"), [
    ({"mixture": [{"web": 0.5, "synthetic": 0.4}]}, {}, "sweeps.s.points[p0].mixture: shares sum to 0.9"),
    ({"mixture": [{"web": 0.5, "books": 0.5}]}, {}, "sweeps.s.points[p0].mixture.books: no such mixture source"),
    ({"epochs": {"source": "web", "unique_tokens": 100, "values": [5]}}, {},
     "sweeps.s.points[p0].epochs.values: 5 epochs of 'web' exceeds its max_epochs=4"),
    ({"global_batch_size": [8, 7]}, {},
     "sweeps.s.points[p1] (global_batch_size=7): training.pretrain.global_batch_size: 7 is not micro_batch_size"),
    ({"lr": [1e-3]}, {"parallel": {"tp": 3}},
     "sweeps.s.points[p0] (lr=0.001): training.pretrain.model.num_attention_heads: 4 not divisible by parallel.tp=3"),
    ({"model": [{"hidden_size": 130}]}, {}, "sweeps.s.points[p0]"),
])
def test_bad_points_are_rejected_at_load_with_the_field(axes, pretrain, field) -> None:
    with pytest.raises(RecipeError) as e:
        with_sweep(axes=axes, pretrain=pretrain)
    assert field in str(e.value)


def test_sweep_needs_an_axis() -> None:
    with pytest.raises(RecipeError, match=r"sweeps\.0\.axes: a sweep needs at least one axis"):
        with_sweep(axes={})


def commit_point(lake, point, recipe, losses, valid_loss, blend_recipe=None, start=None, tokens=None) -> None:
    """A blend and a checkpoint manifest as the operators commit them (blend of `blend_recipe`'s mixture)."""
    from phiflow.blend import mix_params
    from phiflow.commit import commit_files
    from phiflow.manifest import sha256_json
    from phiflow.schema import BLEND_SOURCES
    from training.plan import training_digest

    part = {"recipe": point.recipe_name}
    attempt = lake.new_attempt("blend", part)
    lake.fs.pipe_file(lake.attempt_path("blend", part, attempt) + "/blend.json", b"{}")
    blend = commit_files(lake, dataset="blend", partition=part, attempt=attempt, stage="mix", schema=BLEND_SOURCES,
                         row_count=0, content=point.id, inputs=[],
                         recipe_digest=sha256_json(mix_params(blend_recipe or recipe)), params={},
                         counters={})
    attempt = lake.new_attempt("checkpoints.pretrain", part)
    lake.fs.pipe_file(lake.attempt_path("checkpoints.pretrain", part, attempt) + "/metrics.json", b"{}")
    counters = {"steps": len(losses), "losses": losses, "final_loss": losses[-1], "loss_end_mean": losses[-1],
                "valid_loss": valid_loss, "valid_perplexity": math.exp(valid_loss)}
    counters["tokens"] = tokens
    commit_files(lake, dataset="checkpoints.pretrain", partition=part, attempt=attempt, stage="pretrain",
                 schema=TRAIN_STEPS, row_count=len(losses), content=losses,
                 inputs=[blend.input_ref()] + ([start.input_ref()] if start is not None else []),
                 recipe_digest=training_digest(recipe, "pretrain"), params={}, counters=counters)


def test_report_joins_current_point_manifests(lake) -> None:
    recipe = mix_sweep()
    (p0, r0), (p1, r1), (p2, r2) = sweep_points(recipe, "mix")
    commit_point(lake, p0, r0, [6.2, 5.9], 5.8)
    commit_point(lake, p2, r2, [6.2, 5.1], 5.3)
    commit_point(lake, p1, r1, [6.2, 4.0], 4.0, blend_recipe=r0)  # blend of another mixture: not current
    m = sweep_report.commit_report(recipe, "mix", lake)
    assert m.dataset == "ablations.mix" and m.row_count == 3
    assert m.counters["ok"] == 2 and m.counters["missing"] == ["p1"]
    assert m.counters["best"] == {"valid_loss": "p2", "valid_perplexity": "p2", "final_loss": "p2",
                                  "loss_end_mean": "p2"}
    (path,) = [p for p in lake.data_files(m) if p.endswith("report.json")]
    rows = json.loads(lake.fs.cat_file(path))["points"]
    assert [r["status"] for r in rows] == ["ok", "missing", "ok"]
    assert rows[2]["valid_loss"] == 5.3 and rows[2]["axis_mixture"] == FINAL_MIX
    md = [p for p in lake.data_files(m) if p.endswith("report.md")]
    assert f"| p2 | mixture={FINAL_MIX} | ok | 2 |  | 5.3000 |" in lake.fs.cat_file(md[0]).decode()


def test_lr_fit_recovers_a_power_law() -> None:
    sizes = [sweep_report.model_params(layers, hidden, 512) for layers, hidden in ((2, 64), (4, 128), (8, 256))]
    best = [0.02 * (n / 1e5) ** -0.5 for n in sizes]
    a, b = sweep_report.fit_lr(list(zip(sizes, best, strict=True)))
    assert b == pytest.approx(-0.5)
    assert sweep_report.predict_lr((a, b), 4 * 10**6) == pytest.approx(0.02 * 40**-0.5)
    assert sweep_report.model_params(2, 64, 512) == 2 * (4 * 64 * 64 + 2 * 64 * 256) + 512 * 64
    with pytest.raises(SweepError, match="at least two model sizes"):
        sweep_report.fit_lr([(1000, 1e-3), (1000, 2e-3)])


def test_report_interpolates_the_lr_across_model_sizes(lake) -> None:
    r = with_sweep(pretrain={"parallel": {"tp": 1}}, axes={"lr": [1e-3, 3e-3], "model": [
        {"num_layers": 2, "hidden_size": 64}, {"num_layers": 4, "hidden_size": 128}]})
    points = sweep_points(r, "s")
    small_best, large_best = 3e-3, 1e-3  # the larger model wants the smaller lr
    for p, pr in points:
        lr, small = p.values["lr"], p.values["model"]["hidden_size"] == 64
        valid = 5.0 if lr == (small_best if small else large_best) else 5.5
        commit_point(lake, p, pr, [6.0, valid], valid)
    m = sweep_report.commit_report(r, "s", lake)
    fit = m.counters["lr_fit"]
    sizes = [sweep_report.model_params(2, 64, r.tokenizer.vocab_size),
             sweep_report.model_params(4, 128, r.tokenizer.vocab_size)]
    pairs = list(zip(sizes, [small_best, large_best], strict=True))
    assert [(x["params"], x["lr"]) for x in fit["best_per_size"]] == pairs
    a, b = sweep_report.fit_lr(pairs)
    assert b < 0 and fit["b"] == pytest.approx(b) and fit["a"] == pytest.approx(a)
    target = r.training.pretrain.model
    n = sweep_report.model_params(target.num_layers, target.hidden_size, r.tokenizer.vocab_size)
    assert fit["target_params"] == n and fit["predicted_lr"] == pytest.approx(sweep_report.predict_lr((a, b), n))
    md = [p for p in lake.data_files(m) if p.endswith("report.md")]
    assert "the fit predicts lr" in lake.fs.cat_file(md[0]).decode()
    assert sweep_report.commit_report(mix_sweep(), "mix", lake).counters["lr_fit"] is None  # no lr x model axes


def commit_checkpoint(lake, partition, valid_loss, by_source):
    """A committed pretraining checkpoint manifest (the phase-1 checkpoint a sweep continues from)."""
    from phiflow.commit import commit_files

    attempt = lake.new_attempt("checkpoints.pretrain", partition)
    lake.fs.pipe_file(lake.attempt_path("checkpoints.pretrain", partition, attempt) + "/metrics.json", b"{}")
    counters = {"steps": 15, "tokens": 7680, "valid_loss": valid_loss, "valid_perplexity": math.exp(valid_loss),
                "final_loss": valid_loss, "loss_end_mean": valid_loss,
                "valid_by_source": {k: {"loss": v, "perplexity": math.exp(v)} for k, v in by_source.items()}}
    return commit_files(lake, dataset="checkpoints.pretrain", partition=partition, attempt=attempt,
                        stage="pretrain", schema=TRAIN_STEPS, row_count=15, content=valid_loss, inputs=[],
                        recipe_digest="x", params={}, counters=counters)


def test_points_from_a_checkpoint_name_it_and_the_report_puts_it_first(lake) -> None:
    recipe = load_recipe(DEMO)
    points = sweep_points(recipe, "synthetic_epochs")
    assert [p.values for p, _ in points] == [{"epochs": 4.0}, {"epochs": 12.0}]
    for _, pr in points:
        ref = pr.training.pretrain.init_from
        assert (ref.dataset, ref.partition) == ("checkpoints.pretrain", {"recipe": "demo", "phase": "phase1"})
        assert pr.training.pretrain.phases == [] and pr.training.pretrain.steps == 15
        shares = {s.name: s.share for s in pr.mixture.sources}
        assert shares["web"] + shares["synthetic"] == pytest.approx(1)  # the rest is fresh web only
    base = commit_checkpoint(lake, {"recipe": "demo", "phase": "phase1"}, 4.0, {"web": 4.2, "synthetic": 3.1})
    (p0, r0), (p1, r1) = points
    commit_point(lake, p0, r0, [4.0, 3.8], 3.9, start=base, tokens=2560)
    commit_point(lake, p1, r1, [4.0, 3.6], 3.7, tokens=2560)  # trained without loading the base: not this point
    m = sweep_report.commit_report(recipe, "synthetic_epochs", lake)
    rows = json.loads(lake.fs.cat_file(next(p for p in lake.data_files(m) if p.endswith("report.json"))))["points"]
    assert [(r["point"], r["status"]) for r in rows] == [("base", "base"), ("p0", "ok"), ("p1", "missing")]
    assert rows[0]["valid_perplexity_synthetic"] == pytest.approx(math.exp(3.1)) and rows[1]["tokens"] == 2560
    assert m.counters["points"] == 2 and m.counters["missing"] == ["p1"]
    assert base.input_ref() in m.inputs
    md = lake.fs.cat_file(next(p for p in lake.data_files(m) if p.endswith("report.md"))).decode()
    assert "| base | from checkpoints.pretrain/phase=phase1 | base | 15 | 7680 | 4.0000 |" in md
    assert "valid_perplexity_synthetic" in md.splitlines()[2]


def test_a_sweep_from_a_checkpoint_cannot_change_the_model() -> None:
    with pytest.raises(RecipeError, match=r"sweeps.s.from: .*model shape cannot change"):
        with_sweep(**{"from": "checkpoints.pretrain/phase=phase1", "axes": {"model": [{"num_layers": 2}]}})


def test_report_interpolates_lr_and_batch_from_the_points(lake) -> None:
    """Held-out losses on a known basin (best lr 4e-3 at batch 16): the report proposes it with an
    interval, ready to paste."""
    import yaml

    r = with_sweep(pretrain={"parallel": {"tp": 1}}, axes={"lr": [1e-3, 2e-3, 4e-3, 8e-3, 1.6e-2],
                                                           "global_batch_size": [8, 16, 32]})
    for p, pr in sweep_points(r, "s"):
        x, y = math.log(p.values["lr"] / 4e-3), math.log(p.values["global_batch_size"] / 16)
        valid = 4.0 + 0.3 * x * x + 0.2 * y * y + 0.05 * x * y + 0.002 * math.sin(7 * x + 3 * y)
        commit_point(lake, p, pr, [6.0, valid], valid)
    fit = sweep_report.commit_report(r, "s", lake).counters["hparam_fit"]
    assert fit["lr"] == pytest.approx(4e-3, rel=0.05) and fit["global_batch_size"] == 16
    assert fit["lr_interval"][0] < fit["lr"] < fit["lr_interval"][1] and not fit["extrapolated"]
    md = lake.fs.cat_file(next(p for p in lake.data_files(sweep_report.commit_report(r, "s", lake))
                               if p.endswith("report.md"))).decode()
    snippet = md.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(snippet)["training"]["pretrain"]["global_batch_size"] == 16
    assert sweep_report.commit_report(mix_sweep(), "mix", lake).counters["hparam_fit"] is None  # no lr axis


@pytest.mark.parametrize(("phases", "field"), [
    ([{"name": "a", "fraction": 0.5, "mixture": {"web": 1.0}},
      {"name": "b", "fraction": 0.4, "mixture": {"web": 1.0}}], "training.pretrain.phases: the phases plan"),
    ([{"name": "a", "fraction": 1.0, "mixture": {"web": 0.5, "books": 0.5}}],
     "training.pretrain.phases[0].mixture: ['books'] are not mixture sources"),
    ([{"name": "a", "fraction": 0.5, "tokens": 100, "mixture": {"web": 1.0}}], "give exactly one of tokens or"),
    ([{"name": "a", "fraction": 0.99, "mixture": {"web": 1.0}},
      {"name": "b", "fraction": 0.01, "mixture": {"web": 1.0}}], "phase b gets no step"),
])
def test_bad_phases_are_refused_at_load(phases, field) -> None:
    data = load_recipe(DEMO).model_dump(mode="json")
    data["training"]["pretrain"]["phases"] = phases
    data["sweeps"] = []
    with pytest.raises(RecipeError, match=re.escape(field)):
        parse_recipe(data, load_recipe(DEMO).path)


def test_a_sweep_from_an_undeclared_phase_is_refused() -> None:
    with pytest.raises(RecipeError, match=r"sweeps.s.from: checkpoints.pretrain/phase=phase3 is no checkpoint .*"
                                          r"phase1"):
        with_sweep(**{"from": "checkpoints.pretrain/phase=phase3", "axes": {"lr": [1e-3]}})
