"""Warmup stress test: a short run through learning-rate warmup, judged stable or diverged.

The Phi-4 report stress-tested its settings during warmup. The building blocks here:

* :func:`stress_config` turns a run config into a short probe run: ``steps`` steps, ``warmup_steps``
  of linear warmup to ``lr_multiplier`` x the recipe's peak LR, then held at that peak (no decay to
  mask trouble); grad clipping and everything else as in the recipe; attention logits recorded
  (``output.attention_logits``); no checkpoints written.
* :func:`verdict` judges a run's step records (``loss``, ``grad_norm``, optional
  ``max_attention_logit``) and the error of a run stopped by a non-finite loss.
* :func:`run_stress` launches one such run (``training.launch``) and returns its metrics and verdict.

The stage (StressTestOperator runs it before pretraining): :func:`run_stage` probes the first pretraining
run's config at each of ``training.stress.lr_multipliers`` and commits ``stress.pretrain/recipe=<name>``
(a row per multiplier); :func:`gate` then stops pretraining on a diverged point unless
``continue_on_divergence``. A current report (same blend and settings) is not rerun, but it gates again.

No torch at import time: :func:`verdict` is pure Python over plain dicts.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import statistics
import time
from typing import Any

from phiflow.blend import blend_partition
from phiflow.commit import commit_files, up_to_date
from phiflow.manifest import Manifest, sha256_json
from phiflow.recipe import Recipe
from phiflow.run_config import RunConfig
from phiflow.schema import STRESS_POINTS
from phiflow.storage import Lake
from training.plan import run_plan

__all__ = ["Diverged", "gate", "run_stage", "run_stress", "stress_config", "verdict", "verdict_of_metrics"]

DATASET = "stress.pretrain"

_NONFINITE_ERROR = re.compile(r"non-finite loss .*? at step (\d+)")


def stress_config(
    base: RunConfig, lr_multiplier: float, *, steps: int = 12, warmup_steps: int = 4, name: str | None = None
) -> RunConfig:
    """A copy of ``base`` for a warmup stress run at ``lr_multiplier`` x its peak learning rate.

    Linear warmup over ``warmup_steps`` to the multiplied peak, then constant at it (``min_lr`` = peak)
    until ``steps``. Kept from the recipe: model, data, batch, clipping, Adam settings, weight loading
    (``checkpoint.load_dir``/``finetune``: a midtraining stress run starts from its weights). Dropped:
    checkpoint saving (never write into, nor resume from, the real run's save dir), TensorBoard,
    intermediate evaluation, a phase stop step; the metrics path is left to the launcher.
    """
    if not (lr_multiplier > 0 and math.isfinite(lr_multiplier)):
        raise ValueError(f"lr_multiplier must be a positive finite number, got {lr_multiplier}")
    if not 0 <= warmup_steps < steps:
        raise ValueError(f"need 0 <= warmup_steps < steps, got warmup_steps={warmup_steps} steps={steps}")
    lr = base.optimizer.lr * lr_multiplier
    return base.replace(
        name=name or f"{base.name}-stress-x{lr_multiplier:g}",
        optimizer={"lr": lr, "min_lr": lr, "warmup_steps": warmup_steps, "total_steps": steps},
        checkpoint={"save_dir": None, "save_interval": 0},
        output={"attention_logits": True, "metrics_path": None, "tensorboard_dir": None, "eval_interval": 0},
        stop_at_step=None,  # the probe runs its own steps, not a phase's
    )


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def verdict(
    steps: list[dict[str, Any]],
    error: str | None = None,
    *,
    spike_factor: float = 3.0,
    spike_min_history: int = 3,
    min_drop: float = 0.02,
) -> dict[str, Any]:
    """Did this run diverge? Over its step records and the error of a run stopped early.

    The rule (checked in this order):

    1. **Non-finite loss**: the run stopped with ``training.pretrain.NonFiniteLossError`` (``error``
       says "non-finite loss ... at step N") or a step record holds a NaN/Inf loss. Diverged;
       ``nonfinite_at`` is that step.
    2. **No progress**: with ``q = max(1, n // 4)``, the mean loss of the last ``q`` steps is not at
       least ``min_drop`` (a fraction, default 2%) below the mean of the first ``q``. Why: at
       initialization the loss sits near log(vocab); a healthy run leaves that plateau within a handful
       of steps at its peak LR (unigram statistics come first), so over a warmup-length run the loss must
       fall measurably. A loss that rose, or stayed within 2% of where it started, means the LR is
       too high to make progress (the tiny test model at 1x drops ~10% in 12 steps; at 100x-300x its
       loss ends above the start). Quarter means rather than single steps: one noisy or spiky step
       decides nothing, and a transient spike the run recovers from is not divergence.

    Reported, not judged: ``grad_norm_spikes``, the steps whose grad norm exceeds ``spike_factor`` x
    the median of the earlier steps' (finite) grad norms, once ``spike_min_history`` earlier steps exist
    (a non-finite grad norm is a spike too); ``attention_logit_growth``, the last over the first
    recorded ``max_attention_logit`` (None when not recorded).

    ``error`` other than a non-finite loss (a crash) is not a verdict on stability: ValueError. So is
    a run with fewer than 2 steps and no non-finite loss.
    """
    nonfinite_at = None
    if error:
        found = _NONFINITE_ERROR.search(error)
        if not found:
            raise ValueError(f"the run failed for a reason other than a non-finite loss: {error[:500]}")
        nonfinite_at = int(found.group(1))
    for i, s in enumerate(steps):
        if not _finite(s.get("loss")):
            step = int(s.get("step", i + 1))
            nonfinite_at = step if nonfinite_at is None else min(nonfinite_at, step)
            break

    losses = [float(s["loss"]) for s in steps if _finite(s.get("loss"))]
    out: dict[str, Any] = {
        "diverged": False,
        "reason": None,
        "steps": len(steps),
        "first_loss": losses[0] if losses else None,
        "final_loss": float(steps[-1]["loss"]) if steps else None,
        "max_loss": max(losses) if losses else None,
        "first_quarter_loss": None,
        "last_quarter_loss": None,
        "grad_norm_spikes": _spikes(steps, spike_factor, spike_min_history),
        "max_grad_norm": max((float(s["grad_norm"]) for s in steps if _finite(s.get("grad_norm"))), default=None),
        "max_attention_logit": None,
        "attention_logit_growth": None,
        "nonfinite_at": nonfinite_at,
    }
    logits = [float(s["max_attention_logit"]) for s in steps if s.get("max_attention_logit") is not None]
    if logits:
        out["max_attention_logit"] = max(logits) if all(map(math.isfinite, logits)) else math.nan
        if _finite(logits[0]) and logits[0] > 0:
            out["attention_logit_growth"] = logits[-1] / logits[0]

    if nonfinite_at is not None:
        out.update(diverged=True, reason=f"non-finite loss at step {nonfinite_at}")
        return out
    if len(losses) < 2:
        raise ValueError(f"need at least 2 steps to judge a run, got {len(losses)}")
    q = max(1, len(losses) // 4)
    first, last = statistics.fmean(losses[:q]), statistics.fmean(losses[-q:])
    out.update(first_quarter_loss=first, last_quarter_loss=last)
    if last > first * (1 - min_drop):
        how = "rose" if last > first else f"fell less than {min_drop:.0%}"
        out.update(
            diverged=True,
            reason=f"loss {how}: mean of the last {q} steps {last:.4f} vs the first {q} steps {first:.4f}",
        )
    return out


def _spikes(steps: list[dict[str, Any]], factor: float, min_history: int) -> list[int]:
    spikes, history = [], []
    for i, s in enumerate(steps):
        g = s.get("grad_norm")
        if g is None:
            continue
        if len(history) >= min_history and (not _finite(g) or g > factor * statistics.median(history)):
            spikes.append(int(s.get("step", i + 1)))
        if _finite(g):
            history.append(float(g))
    return spikes


def verdict_of_metrics(metrics: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """:func:`verdict` of a run's metrics JSON (``steps`` and, for a failed run, ``error``)."""
    return verdict(metrics.get("steps") or [], metrics.get("error"), **kwargs)


def run_stress(
    base: RunConfig,
    lr_multiplier: float,
    work_dir: str | os.PathLike[str],
    *,
    steps: int = 12,
    warmup_steps: int = 4,
    dp: int = 1,
    timeout_s: float | None = None,
    **verdict_kwargs: Any,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Launch the stress run of :func:`stress_config` in ``work_dir``; return (metrics, verdict).

    A run stopped by a non-finite loss is a result (diverged), not an exception; any other failure
    (no metrics written) raises ``training.launch.TrainingFailed``.
    """
    from training.launch import TrainingFailed, launch

    cfg = stress_config(base, lr_multiplier, steps=steps, warmup_steps=warmup_steps)
    try:
        metrics = launch(cfg, work_dir, dp=dp, stream=None, timeout_s=timeout_s)
    except TrainingFailed as e:
        if not (e.metrics and e.metrics.get("status") == "failed" and e.metrics.get("error")):
            raise
        metrics = e.metrics
    return metrics, verdict_of_metrics(metrics, **verdict_kwargs)


# -- the stage ---------------------------------------------------------------------------------------------
class Diverged(RuntimeError):
    """A stress point diverged and the recipe stops pretraining on divergence."""


def run_stage(recipe: Recipe, lake: Lake, airflow: dict[str, Any] | None = None,
              timeout_s: float | None = None) -> Manifest:
    """The stress report of the first pretraining run's config: committed now, or the current one (same
    blend and settings; the gate's setting is not part of the measurement: changing it re-judges only)."""
    assert recipe.training is not None and recipe.training.stress is not None
    spec, phases = recipe.training.stress, recipe.training.pretrain.phase_plan()
    plan = run_plan(recipe, lake, "pretrain", phases[0].name if phases else None)
    part, inputs = blend_partition(recipe), plan.inputs
    digest = sha256_json({"stress": spec.model_dump(mode="json", exclude={"continue_on_divergence"}),
                          "run": plan.digest})
    done = up_to_date(lake, DATASET, part, inputs, digest)
    if done is not None:
        print(f"[phiflow] stress: {done.dataset}/{done.key} is current (same blend and settings): its verdict "
              "gates again", flush=True)
        return done
    attempt = lake.new_attempt(DATASET, part)
    work, started, rows = lake.attempt_path(DATASET, part, attempt), time.time(), []
    warmup = min(plan.cfg.optimizer.warmup_steps, spec.steps - 1)
    for mult in spec.lr_multipliers:
        metrics, judged = run_stress(plan.cfg, mult, posixpath.join(work, f"x{mult:g}"), steps=spec.steps,
                                     warmup_steps=warmup, dp=plan.dp, timeout_s=timeout_s)
        rows.append(stress_row(mult, plan.cfg.optimizer.lr * mult, metrics, judged))
        verdict_text = f"DIVERGED: {judged['reason']}" if judged["diverged"] else "stable"
        print(f"[phiflow] stress x{mult:g} (lr {rows[-1]['lr']:.3g}): {verdict_text}", flush=True)
    return commit_files(
        lake, dataset=DATASET, partition=part, attempt=attempt, stage="stress", schema=STRESS_POINTS,
        row_count=len(rows), content=rows, inputs=inputs, recipe_digest=digest,
        params={"stress": spec.model_dump(mode="json"), "warmup_steps": warmup, "peak_lr": plan.cfg.optimizer.lr},
        counters={"points": rows, "diverged": [r["multiplier"] for r in rows if r["diverged"]]},
        airflow=airflow, started=started,
    )


def gate(recipe: Recipe, report: Manifest) -> list[float]:
    """The multipliers of the report that diverged; Diverged when that stops pretraining."""
    assert recipe.training is not None and recipe.training.stress is not None
    for r in report.counters["points"]:
        verdict_text = f"DIVERGED ({r['reason']})" if r["diverged"] else "stable"
        print(f"[phiflow] stress x{r['multiplier']:g} lr {r['lr']:.3g}: {verdict_text}; loss {_num(r['first_loss'])}"
              f" -> {_num(r['final_loss'])}, max grad norm {_num(r['max_grad_norm'], '.3g')}, spikes at "
              f"{r['grad_norm_spikes'] or 'none'}, attention logit x{_num(r['attention_logit_growth'], '.2f')}",
              flush=True)
    diverged = report.counters["diverged"]
    if diverged and not recipe.training.stress.continue_on_divergence:
        raise Diverged(
            f"warmup stress test: lr x{', x'.join(f'{m:g}' for m in diverged)} diverged; pretraining does not "
            "start (lower training.pretrain.optimizer.lr or the multipliers, or set "
            "training.stress.continue_on_divergence to go on)")
    return diverged


def stress_row(multiplier: float, lr: float, metrics: dict[str, Any], verdict: dict[str, Any]) -> dict[str, Any]:
    """One multiplier of the stress report: the verdict and the curves it was read from."""
    steps = metrics.get("steps") or []
    row = {"multiplier": multiplier, "lr": lr, **verdict, "steps": len(steps),
           "losses": [s["loss"] for s in steps], "grad_norms": [s["grad_norm"] for s in steps],
           "attention_logits": [s.get("max_attention_logit") for s in steps], "error": metrics.get("error")}
    return _json_safe(row)


def _num(x: float | None, spec: str = ".3f") -> str:
    return "?" if x is None else format(x, spec)


def _json_safe(x: Any) -> Any:
    """NaN and infinities (a diverged run's figures) as None: manifests are strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x
