"""Warmup stress test: the attention-logit probe, the divergence verdict, and real runs through warmup
on the tiny model (three torchrun launches): at the recipe's peak LR (stable), at 300x it (diverges,
attention logits explode), and at the peak with TP=2 (the logit is the MAX over both ranks' heads)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phiflow.run_config import RunConfig
from training.stress import run_stress, stress_config, verdict, verdict_of_metrics

STEPS, WARMUP = 12, 4
DIVERGING = 300.0  # x the tiny recipe's 3e-3: 30x recovers, 100x ends above the start, 300x blows up


def stress(
    make_run: Callable[..., RunConfig], work: Path, multiplier: float, tp: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    return run_stress(
        make_run("stress", steps=STEPS, tp=tp), multiplier, work, steps=STEPS, warmup_steps=WARMUP, timeout_s=300
    )


@pytest.fixture(scope="module")
def peak(make_run: Callable[..., RunConfig], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    work = tmp_path_factory.mktemp("stress_x1")
    return (*stress(make_run, work, 1.0), work)


@pytest.fixture(scope="module")
def high(make_run: Callable[..., RunConfig], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, Path]:
    work = tmp_path_factory.mktemp("stress_high")
    return (*stress(make_run, work, DIVERGING), work)


def logits(metrics: dict[str, Any]) -> list[float]:
    return [s["max_attention_logit"] for s in metrics["steps"]]


# ----------------------------------------------------------------------------------------------
# Real runs
# ----------------------------------------------------------------------------------------------
def test_peak_lr_is_stable(peak: tuple[dict, dict, Path]) -> None:
    metrics, v, work = peak
    assert metrics["status"] == "ok" and len(metrics["steps"]) == STEPS
    assert v["diverged"] is False and v["reason"] is None and v["nonfinite_at"] is None, v
    assert v["last_quarter_loss"] < v["first_quarter_loss"] - 0.3, v
    assert abs(v["first_loss"] - math.log(512)) < 0.3
    saved = json.loads((work / "run.json").read_text())
    assert saved["optimizer"]["clip_grad"] == 1.0 and saved["output"]["attention_logits"] is True
    lrs = [s["lr"] for s in metrics["steps"]]  # the lr after each step: warmup, then held at the peak
    assert lrs[0] == pytest.approx(3e-3 / WARMUP) and lrs[WARMUP - 1 :] == pytest.approx([3e-3] * (STEPS - WARMUP + 1))
    ls = logits(metrics)
    assert len(ls) == STEPS and all(math.isfinite(x) and x > 0 for x in ls)
    assert len(set(ls)) > STEPS // 2  # it measures the changing model, not a constant
    assert 0.01 < ls[0] < 1.0  # q.k/sqrt(hn) of a freshly initialized model (std 0.02) is small
    assert v["attention_logit_growth"] == pytest.approx(ls[-1] / ls[0]) and v["attention_logit_growth"] < 5


def test_high_lr_diverges(peak: tuple[dict, dict, Path], high: tuple[dict, dict, Path]) -> None:
    metrics, v, work = high
    assert v["diverged"] is True and v["reason"], v
    assert v["nonfinite_at"] is not None or v["last_quarter_loss"] > v["first_quarter_loss"], v
    assert v["max_loss"] > math.log(512) + 3  # blew up well above the uniform start
    saved = json.loads((work / "run.json").read_text())
    assert saved["optimizer"]["lr"] == pytest.approx(3e-3 * DIVERGING) and saved["optimizer"]["clip_grad"] == 1.0
    ls, base = logits(metrics), logits(peak[0])
    assert len(ls) == len(metrics["steps"]) and all(not math.isnan(x) for x in ls)
    assert ls[0] == pytest.approx(base[0], rel=1e-6)  # step 1: same initial weights, same batch
    assert v["attention_logit_growth"] > 100 * peak[1]["attention_logit_growth"], (v, peak[1])
    assert v["max_attention_logit"] > 100 * peak[1]["max_attention_logit"]


def test_tp2_reports_the_max_over_all_heads(
    make_run: Callable[..., RunConfig], peak: tuple[dict, dict, Path], tmp_path: Path
) -> None:
    """Each TP rank sees half the heads; the all-reduced MAX equals the TP=1 run's logit every step."""
    metrics, v = stress(make_run, tmp_path, 1.0, tp=2)
    assert metrics["tp"] == 2 and v["diverged"] is False
    assert logits(metrics) == pytest.approx(logits(peak[0]), rel=1e-4)


def test_stress_config_keeps_the_recipe(make_run: Callable[..., RunConfig]) -> None:
    base = make_run(
        "base",
        steps=100,
        checkpoint={"save_dir": "/ckpt", "save_interval": 10},
        output={"tensorboard_dir": "/tb", "metrics_path": "/m.json", "eval_interval": 5},
    )
    cfg = stress_config(base, 30, steps=12, warmup_steps=4)
    o = cfg.optimizer
    assert o.lr == pytest.approx(0.09) and o.min_lr == o.lr and (o.warmup_steps, o.total_steps) == (4, 12)
    assert o.clip_grad == base.optimizer.clip_grad == 1.0 and cfg.model == base.model and cfg.data == base.data
    assert cfg.checkpoint.save_dir is None and cfg.output.attention_logits and cfg.output.metrics_path is None
    assert base.optimizer.lr == 3e-3 and base.checkpoint.save_dir == "/ckpt"  # the base is untouched
    assert RunConfig.from_dict(cfg.to_dict()) == cfg.validate(1)
    assert RunConfig().output.attention_logits is False  # off by default
    with pytest.raises(ValueError):
        stress_config(base, 0.0)


# ----------------------------------------------------------------------------------------------
# The probe, in process on hand-made tensors
# ----------------------------------------------------------------------------------------------
def test_probe_records_the_causal_max_logit() -> None:
    import torch

    from training.attention_probe import AttentionProbe, all_reduce_max, max_logit

    class Core(torch.nn.Module):
        attn_mask_type = type("T", (), {"name": "causal"})()

        def __init__(self, scale: float) -> None:
            super().__init__()
            self.softmax_scale = scale

        def forward(self, query: Any, key: Any, value: Any, attention_mask: Any, **kw: Any) -> Any:
            return value

    class Layer(torch.nn.Module):
        def __init__(self, scale: float) -> None:
            super().__init__()
            self.core_attention = Core(scale)

    model = torch.nn.Sequential(Layer(0.5), Layer(0.5))
    g = torch.Generator().manual_seed(0)
    sq, b, heads, groups, hn = 5, 2, 4, 2, 8
    q, k = torch.randn(sq, b, heads, hn, generator=g), torch.randn(sq, b, groups, hn, generator=g)

    def reference(q: Any, k: Any) -> float:
        kk = k.repeat_interleave(heads // groups, dim=2)
        best = -math.inf
        for i in range(sq):
            for j in range(i + 1):  # causal: key positions up to the query's
                best = max(best, float((q[i] * kk[j]).sum(-1).max()) * 0.5)
        return best

    assert max_logit(q, k, 0.5, causal=True) == pytest.approx(reference(q, k), rel=1e-6)
    assert max_logit(q, k, 0.5, causal=False) > max_logit(q, k, 0.5, causal=True) - 1e-6

    probe = AttentionProbe(model)
    assert len(probe.modules) == 2
    model[0].core_attention(q, k, None, None)  # positional, as megatron passes them
    model[1].core_attention(query=q * 2, key=k, value=None, attention_mask=None)  # keywords
    model[1].core_attention(q * 10, k, None, None)  # a second micro batch of the same step: skipped
    assert probe.take() == pytest.approx(2 * reference(q, k), rel=1e-6)
    assert probe.take() is None  # reset
    model.eval()
    model[0].core_attention(q * 10, k, None, None)  # evaluation: not recorded
    assert probe.take() is None
    model.train()
    model[0].core_attention(q * float("nan"), k, None, None)
    assert math.isnan(probe.take())
    probe.close()
    model[0].core_attention(q, k, None, None)
    assert probe.take() is None  # hooks removed
    assert all_reduce_max(1.5) == 1.5  # no process group: the value itself


# ----------------------------------------------------------------------------------------------
# The verdict on hand-written histories
# ----------------------------------------------------------------------------------------------
def curve(losses: list[float], grad_norms: list[float] | None = None, logit: list[float] | None = None) -> list[dict]:
    out = []
    for i, loss in enumerate(losses):
        rec = {"step": i + 1, "loss": loss, "grad_norm": (grad_norms or [1.0] * len(losses))[i]}
        if logit:
            rec["max_attention_logit"] = logit[i]
        out.append(rec)
    return out


def test_verdict_decreasing_curve_is_stable() -> None:
    losses = [6.25, 6.2, 6.1, 5.9, 5.7, 5.5, 5.3, 5.2]
    v = verdict(curve(losses, logit=[0.1, 0.1, 0.12, 0.13, 0.15, 0.16, 0.18, 0.2]))
    assert v["diverged"] is False and v["reason"] is None and v["nonfinite_at"] is None
    assert v["first_loss"] == 6.25 and v["final_loss"] == 5.2 and v["max_loss"] == 6.25
    assert v["first_quarter_loss"] == pytest.approx(6.225) and v["last_quarter_loss"] == pytest.approx(5.25)
    assert v["grad_norm_spikes"] == [] and v["max_grad_norm"] == 1.0
    assert v["attention_logit_growth"] == pytest.approx(2.0) and v["max_attention_logit"] == 0.2


def test_verdict_flat_or_rising_loss_diverges() -> None:
    flat = verdict(curve([6.25, 6.3, 6.2, 6.24, 6.22, 6.26, 6.21, 6.2]))  # within 2% of the start
    assert flat["diverged"] is True and "fell less than 2%" in flat["reason"]
    rising = verdict(curve([6.25, 6.3, 7.0, 9.0, 11.0, 9.5, 8.0, 7.5]))
    assert rising["diverged"] is True and "rose" in rising["reason"] and rising["max_loss"] == 11.0
    # a spike the run recovers from is no divergence
    assert verdict(curve([6.25, 6.2, 6.0, 9.0, 5.8, 5.6, 5.5, 5.4]))["diverged"] is False
    assert verdict(curve([6.25, 6.2, 6.0, 5.8]), min_drop=0.1)["diverged"] is True  # the margin is a knob


def test_verdict_finds_grad_norm_spikes() -> None:
    norms = [2.0, 1.5, 1.2, 1.0, 3.5, 1.0, 0.9, 9.0, 0.8, float("nan")]
    v = verdict(curve([6.0 - 0.1 * i for i in range(10)], norms))
    # step 5: 3.5 < 3 x median(2.0, 1.5, 1.2, 1.0) = 4.05 (a spike at factor 2.5 only); step 8: 9.0 > 3 x 1.2; 10: NaN
    assert v["grad_norm_spikes"] == [8, 10] and v["max_grad_norm"] == 9.0
    assert verdict(curve([6.0 - 0.1 * i for i in range(10)], norms), spike_factor=2.5)["grad_norm_spikes"] == [5, 8, 10]
    # no spike before spike_min_history earlier steps exist
    assert verdict(curve([6, 5.9, 5.8, 5.7], [1.0, 10.0, 1.0, 1.0]))["grad_norm_spikes"] == []
    assert verdict(curve([6, 5.9, 5.8, 5.7], [1.0, 10.0, 1.0, 1.0]), spike_min_history=1)["grad_norm_spikes"] == [2]


def test_verdict_nonfinite_loss() -> None:
    error = "non-finite loss inf at step 7 of run 'x'; stopping before the optimizer update (last good step 6)"
    v = verdict(curve([6.25, 6.0, 5.8, 5.6, 5.5, 5.4]), error)
    assert v["diverged"] is True and v["nonfinite_at"] == 7 and "step 7" in v["reason"]
    assert v["final_loss"] == 5.4
    metrics = {"status": "failed", "error": "non-finite loss nan at step 1 of run 'y'; stopping", "steps": []}
    assert verdict_of_metrics(metrics)["nonfinite_at"] == 1 and verdict_of_metrics(metrics)["final_loss"] is None
    # a run trained with fail_on_nonfinite off records the NaN itself
    v = verdict(curve([6.25, 6.0, float("nan"), float("nan")], logit=[0.1, 0.2, float("nan"), float("nan")]))
    assert v["diverged"] is True and v["nonfinite_at"] == 3 and math.isnan(v["max_attention_logit"])
    with pytest.raises(ValueError, match="other than a non-finite loss"):
        verdict(curve([6.0, 5.0]), "RuntimeError: gloo timed out")
    with pytest.raises(ValueError, match="at least 2 steps"):
        verdict(curve([6.0]))
    assert verdict(curve([6.0, 5.0]))["attention_logit_growth"] is None  # not recorded
