"""The ablation report stage: a sweep's points (phiflow.recipe.sweep_points) and their committed
checkpoint and evaluation manifests -> `ablations.<sweep>/recipe=<name>`: a table (CSV, markdown), loss
curves, the best point per metric and, for learning-rate sweeps, the fits that propose the long run's
setting. In-process (AblationReportOperator runs it); no Airflow, no torch.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from phiflow import stages
from phiflow.blend import DATASET as BLEND
from phiflow.blend import blend_partition, mix_params
from phiflow.manifest import sha256_json
from phiflow.recipe import SweepError, SweepPoint, axis_text, sweep_points, sweep_spec
from training.plan import start_ref, training_digest

if TYPE_CHECKING:
    from phiflow.manifest import Manifest
    from phiflow.recipe import Recipe, SweepSpec

METRICS = ("valid_loss", "valid_perplexity", "final_loss", "loss_end_mean")  # lower is better, all of them


def current_checkpoint(lake: Any, recipe: Recipe) -> Manifest | None:
    """The point's committed `checkpoints.pretrain` partition if it was trained from the point's current
    blend (mixed with the point's mixture), training section and, for a point `from` a checkpoint, that
    checkpoint's current version; None: failed, stale or not run yet."""
    part = blend_partition(recipe)
    blend, m = lake.manifest(BLEND, part), lake.manifest("checkpoints.pretrain", part)
    if blend is None or m is None or blend.recipe_digest != sha256_json(mix_params(recipe)):
        return None
    base = base_checkpoint(lake, recipe)
    inputs = [blend.input_ref()] + ([base.input_ref()] if base is not None else [])
    return m if m.recipe_digest == training_digest(recipe, "pretrain") and m.inputs == inputs else None


def base_checkpoint(lake: Any, recipe: Recipe) -> Manifest | None:
    """The committed checkpoint a point continues from (`init_from`), if the recipe names one and it exists."""
    ref = start_ref(recipe, "pretrain")
    return lake.manifest(*ref) if ref is not None else None


# -- the report ---------------------------------------------------------------------------------------
def current_evaluation(lake: Any, recipe: Recipe, checkpoint: Manifest) -> Manifest | None:
    """The committed benchmark evaluation of exactly this checkpoint manifest, else None."""
    m = lake.manifest(stages.io(recipe, "evaluate", "*").output, {"recipe": recipe.name})
    return m if m is not None and m.inputs and m.inputs[0] == checkpoint.input_ref() else None


def point_row(point: SweepPoint, manifest: Manifest | None, evaluation: Manifest | None = None) -> dict[str, Any]:
    """One row of the report: the point's axis values and the metrics its checkpoint manifest holds
    (per-source held-out perplexity, benchmark accuracies when the point was evaluated)."""
    row: dict[str, Any] = {"point": point.id, "label": point.label, "recipe": point.recipe_name,
                           **{f"axis_{k}": axis_text(v) for k, v in point.values.items()}}
    if manifest is None:
        return {**row, "status": "missing", **dict.fromkeys(METRICS), "steps": None, "manifest": None}
    return {**row, "status": "ok", **_metrics(manifest, evaluation)}


def _metrics(manifest: Manifest, evaluation: Manifest | None) -> dict[str, Any]:
    c = manifest.counters
    by_source = {f"valid_perplexity_{k}": v["perplexity"] for k, v in (c.get("valid_by_source") or {}).items()}
    scores = evaluation.counters["benchmarks"] if evaluation else {}
    mc = {f"mc_{k}_accuracy": v["accuracy"] for k, v in scores.items()}
    return {**{k: c.get(k) for k in METRICS}, **by_source, **mc, "steps": c.get("steps"), "tokens": c.get("tokens"),
            "mean_tokens_per_s": c.get("mean_tokens_per_s"), "manifest": manifest.digest}


def base_row(sweep: SweepSpec, base: Manifest | None, evaluation: Manifest | None) -> dict[str, Any]:
    """The checkpoint every point continued from, as the report's first row (`status: base`): what each
    point's equal tokens bought is read against it."""
    row = {"point": "base", "label": f"from {sweep.from_}", "recipe": None}
    if base is None:
        return {**row, "status": "missing", **dict.fromkeys(METRICS), "steps": None, "manifest": None}
    return {**row, "status": "base", **_metrics(base, evaluation)}


def best_points(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The point with the lowest value of each metric (finite values only)."""
    out = {}
    for m in METRICS:
        have = [r for r in rows if r["status"] == "ok" and isinstance(r.get(m), int | float) and math.isfinite(r[m])]
        if have:
            out[m] = min(have, key=lambda r: r[m])["point"]
    return out


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for r in rows for k in r))
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def table_markdown(sweep: str, rows: Sequence[dict[str, Any]], best: dict[str, str]) -> str:
    """Points side by side at their tokens: metrics, held-out perplexity per source, benchmark accuracies."""
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith(("valid_perplexity_", "mc_"))]
    cols = ["point", "label", "status", "steps", "tokens", *METRICS, *extra]
    lines = [f"# Ablation `{sweep}`", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), float) else "" if r.get(c) is None else str(r[c])
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best point per metric (lower is better): "
              + ", ".join(f"{m}: {p}" for m, p in best.items()), ""]
    return "\n".join(lines)


def plot_png(sweep: str, rows: Sequence[dict[str, Any]], curves: dict[str, list[float]]) -> bytes | None:
    """Loss curves overlaid, and each metric per point (the swept axis); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for r in rows:
        if r["point"] in curves:
            left.plot(range(1, len(curves[r["point"]]) + 1), curves[r["point"]], label=f"{r['point']}: {r['label']}")
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=7)
    left.set_title(f"{sweep}: loss curves", fontsize=9)
    ok = [r for r in rows if r["status"] == "ok"]
    for m in ("valid_loss", "final_loss"):
        right.plot([r["label"] for r in ok], [r[m] for r in ok], marker="o", label=m)
    right.set_title(f"{sweep}: metric vs swept axis", fontsize=9)
    right.tick_params(axis="x", labelsize=7, rotation=20)
    right.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


# -- learning rate across model sizes -------------------------------------------------------------
def model_params(num_layers: int, hidden_size: int, vocab_size: int, ffn_hidden_size: int | None = None) -> int:
    """Parameters of a GPT block stack (attention 4h^2, MLP 2 h ffn) plus the embedding, for LR fits."""
    ffn = ffn_hidden_size or 4 * hidden_size
    return num_layers * (4 * hidden_size * hidden_size + 2 * hidden_size * ffn) + vocab_size * hidden_size


def fit_lr(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit log(best lr) = a + b log(params) over (params, best lr) pairs: (a, b)."""
    if len({p for p, _ in points}) < 2:
        raise SweepError("an lr fit needs the best lr of at least two model sizes")
    xs = [math.log(p) for p, _ in points]
    ys = [math.log(lr) for _, lr in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def predict_lr(fit: tuple[float, float], params: int) -> float:
    a, b = fit
    return math.exp(a + b * math.log(params))


def lr_interpolation(recipe: Recipe, points: Sequence[tuple[SweepPoint, Recipe, dict[str, Any]]]
                     ) -> dict[str, Any] | None:
    """For a sweep over `lr` and `model`, as the report set its learning rate: the best lr of each model
    size (lowest valid_loss, else final_loss), the power-law fit across sizes, and the lr it predicts
    for the recipe's own pretraining model. None when fewer than two sizes have a finished point."""
    best: dict[int, tuple[float, float, str]] = {}  # params -> (metric, lr, point)
    for point, pr, row in points:
        metric = row.get("valid_loss") if row.get("valid_loss") is not None else row.get("final_loss")
        if not {"lr", "model"} <= point.values.keys() or row["status"] != "ok" or metric is None:
            continue
        assert pr.training is not None
        m, lr = pr.training.pretrain.model, pr.training.pretrain.optimizer.lr
        n = model_params(m.num_layers, m.hidden_size, pr.tokenizer.vocab_size, m.ffn_hidden_size)
        if math.isfinite(metric) and (n not in best or metric < best[n][0]):
            best[n] = (metric, lr, point.id)
    if len(best) < 2:
        return None
    fit = fit_lr([(n, lr) for n, (_, lr, _) in best.items()])
    assert recipe.training is not None
    t = recipe.training.pretrain.model
    target = model_params(t.num_layers, t.hidden_size, recipe.tokenizer.vocab_size, t.ffn_hidden_size)
    return {
        "best_per_size": [{"params": n, "lr": lr, "point": pid, "metric": metric}
                          for n, (metric, lr, pid) in sorted(best.items())],
        "a": fit[0], "b": fit[1], "target_params": target, "predicted_lr": predict_lr(fit, target),
    }


def hparam_interpolation(points: Sequence[tuple[SweepPoint, Recipe, dict[str, Any]]]) -> dict[str, Any] | None:
    """For a sweep over `lr` (and `global_batch_size`) at one model size: the loss surface fitted from the
    short runs and the setting it proposes for the long run (phiflow.hparam_fit). None when the sweep
    varies no lr, also varies the model (lr_interpolation's case), or too few points finished."""
    from phiflow.hparam_fit import fit_lr_batch

    axes = points[0][0].values.keys() if points else set()
    if "lr" not in axes or "model" in axes:
        return None
    fit_points = []
    for point, pr, row in points:
        if row["status"] != "ok":
            continue
        assert pr.training is not None
        loss = row.get("valid_loss") if row.get("valid_loss") is not None else row.get("final_loss")
        fit_points.append({"point": point.id, "lr": pr.training.pretrain.optimizer.lr, "loss": loss,
                           "global_batch_size": pr.training.pretrain.global_batch_size
                           if "global_batch_size" in axes else None})
    return fit_lr_batch(fit_points)


def commit_report(recipe: Recipe, sweep_name: str, lake: Any, airflow: dict[str, Any] | None = None) -> Manifest:
    """Join the points' current checkpoint manifests into `ablations.<sweep>/recipe=<name>`.

    A point is `ok` when its committed `checkpoints.pretrain` partition was trained with the point's
    recipe (same training digest); otherwise `missing` (failed, or not run yet): rerun it and report again.
    """
    import json
    import posixpath
    import time

    from phiflow.commit import commit_files
    from phiflow.schema import ABLATION_POINTS

    started = time.time()
    dataset, part = f"ablations.{sweep_name}", {"recipe": recipe.name}
    rows, curves, inputs, joined = [], {}, [], []
    for point, pr in sweep_points(recipe, sweep_name):
        m = current_checkpoint(lake, pr)
        ev = current_evaluation(lake, pr, m) if m is not None else None
        rows.append(point_row(point, m, ev))
        joined.append((point, pr, rows[-1]))
        if m is not None:
            curves[point.id] = m.counters["losses"]
            inputs += [m.input_ref()] + ([ev.input_ref()] if ev is not None else [])
    best = best_points(rows)
    spec = sweep_spec(recipe, sweep_name)
    if spec.from_ is not None:
        base = base_checkpoint(lake, joined[0][1])
        rows.insert(0, base_row(spec, base, current_evaluation(lake, recipe, base) if base is not None else None))
        inputs += [base.input_ref()] if base is not None else []
    lr_fit = lr_interpolation(recipe, joined)
    hparams = hparam_interpolation(joined)
    attempt = lake.new_attempt(dataset, part)
    folder = lake.attempt_path(dataset, part, attempt)
    body = {"sweep": sweep_name, "recipe": recipe.name, "points": rows, "best": best, "lr_fit": lr_fit,
            "hparam_fit": hparams}
    report = table_markdown(sweep_name, rows, best)
    if lr_fit is not None:
        report += (f"\nLearning rate across model sizes: best lr ~ params^{lr_fit['b']:.3f}; for this recipe's model "
                   f"({lr_fit['target_params']:,} parameters) the fit predicts lr = {lr_fit['predicted_lr']:.3g}\n")
    if hparams is not None:
        from phiflow.hparam_fit import markdown

        report += "\n## Learning rate x batch size, interpolated from the points\n\n" + markdown(hparams) + "\n"
    lake.fs.pipe_file(posixpath.join(folder, "report.json"), json.dumps(body, indent=2).encode())
    lake.fs.pipe_file(posixpath.join(folder, "report.csv"), table_csv(rows).encode())
    lake.fs.pipe_file(posixpath.join(folder, "report.md"), report.encode())
    png = plot_png(sweep_name, rows, curves)
    if png is not None:
        lake.fs.pipe_file(posixpath.join(folder, "report.png"), png)
    print(report)
    return commit_files(
        lake, dataset=dataset, partition=part, attempt=attempt, stage="ablation_report", schema=ABLATION_POINTS,
        row_count=len(rows), content=body, inputs=inputs,
        recipe_digest=sha256_json(sweep_spec(recipe, sweep_name).model_dump(mode="json")),
        params={"sweep": sweep_spec(recipe, sweep_name).model_dump(mode="json")}, airflow=airflow, started=started,
        counters={"points": len(rows) - (spec.from_ is not None), "ok": sum(r["status"] == "ok" for r in rows),
                  "missing": [r["point"] for r in rows if r["status"] == "missing"], "best": best,
                  "plot": png is not None, "lr_fit": lr_fit, "hparam_fit": hparams},
    )
