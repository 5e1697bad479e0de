"""Learning rate and batch size from short ablation runs, "found by interpolating short runs" (Phi-4).

Per batch size the held-out loss of a short run is close to a parabola in log(lr) (the "LR basin"), so
the sweep's points are fitted by least squares with a quadratic in x = ln(lr), or, when the sweep also
varies the batch size, a quadratic surface in (x, y = ln(global_batch_size)). The minimiser is the
proposal; a seeded residual bootstrap says how well the points pin it down, and the result says when
the fit cannot be trusted (no curvature, optimum outside the grid). Pure: stdlib and numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

QUANTILES = (0.16, 0.84)  # a 68% interval, the +-1 sigma band of a normal


def _design(x: np.ndarray, y: np.ndarray | None, n_batches: int) -> tuple[list[str], np.ndarray]:
    """Term names and columns: 1, x, x^2 for one batch size; the surface otherwise (no y^2 with 2 sizes,
    which a parabola through two values of y cannot determine)."""
    if y is None:
        return ["1", "x", "x^2"], np.column_stack([np.ones_like(x), x, x * x])
    cols = {"1": np.ones_like(x), "x": x, "y": y, "x^2": x * x, "y^2": y * y, "xy": x * y}
    if n_batches == 2:
        del cols["y^2"]
    return list(cols), np.column_stack(list(cols.values()))


def _lr_star(c: dict[str, np.ndarray], y: float | None) -> np.ndarray:
    """ln(lr) minimising the loss at batch size e^y (the fitted curvature in x must be > 0)."""
    slope = c["x"] + (c["xy"] * y if y is not None else 0.0)
    return -slope / (2 * c["x^2"])


def _predict(c: dict[str, float], x: float, y: float | None) -> float:
    y = 0.0 if y is None else y
    terms = {"1": 1.0, "x": x, "y": y, "x^2": x * x, "y^2": y * y, "xy": x * y}
    return float(sum(v * terms[k] for k, v in c.items()))


def fit_lr_batch(points: Sequence[dict[str, Any]], *, n_boot: int = 200, seed: int = 0) -> dict[str, Any] | None:
    """Fit the sweep's losses and propose lr (and global_batch_size when the sweep varies it).

    Points with a missing or non-finite loss (a diverged run) are dropped and listed. Returns None when
    the rest cannot determine the fit: fewer than 3 distinct lrs (a parabola needs 3), or, with 2 or
    more batch sizes, fewer than 6 points or a rank-deficient design (the lrs not spread across the
    batch sizes). Raises ValueError on an lr <= 0 or a mix of set and unset batch sizes (caller bugs).
    """
    finite = [p["loss"] is not None and math.isfinite(p["loss"]) for p in points]
    dropped = [p["point"] for p, ok in zip(points, finite, strict=True) if not ok]
    used = [p for p, ok in zip(points, finite, strict=True) if ok]
    if any(not p["lr"] > 0 for p in used):
        raise ValueError("every lr must be > 0 (it is fitted in log space)")
    batches = sorted({p.get("global_batch_size") for p in used}, key=lambda b: (b is None, b))
    if None in batches and len(batches) > 1:
        raise ValueError("global_batch_size is set on some points and not on others")
    lrs = np.array([p["lr"] for p in used], dtype=float)
    loss = np.array([p["loss"] for p in used], dtype=float)
    x = np.log(lrs)
    y = np.log([float(p["global_batch_size"]) for p in used]) if len(batches) > 1 else None
    names, a = _design(x, y, len(batches))
    if len(set(lrs)) < 3 or (y is not None and len(used) < 6) or np.linalg.matrix_rank(a) < len(names):
        return None

    pinv = np.linalg.pinv(a)
    coef = pinv @ loss
    fitted = a @ coef
    resid = loss - fitted
    ss_tot = float(np.sum((loss - loss.mean()) ** 2))
    c = {k: float(v) for k, v in zip(names, coef, strict=True)}
    out: dict[str, Any] = {
        "points_used": len(used), "dropped": dropped, "terms": names, "coef": c,
        "r2": 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0,
        "convex": c["x^2"] > 0, "lr": None, "global_batch_size": None, "batch_from": None, "loss": None,
        "per_batch": [], "lr_interval": None, "log_lr_sd": None, "n_boot": n_boot, "boot_nonconvex": 0,
        "extrapolated": False, "reason": None, "seed": seed,
    }
    if not out["convex"]:
        out["reason"] = (f"the loss is not convex in log(lr) (curvature {c['x^2']:.3g} <= 0, e.g. monotone over "
                         "the grid): no optimum to propose; extend the sweep until the loss turns up")
        return out

    y_star = None
    if y is not None:
        for b in batches:
            xb = float(_lr_star(c, math.log(b)))
            out["per_batch"].append({"global_batch_size": b, "lr": math.exp(xb), "loss": _predict(c, xb, math.log(b))})
        if len(batches) > 2 and c["y^2"] > 0 and 4 * c["x^2"] * c["y^2"] > c["xy"] ** 2:
            # Convex surface: the stationary point of the gradient, rounded to a whole batch size.
            h = np.array([[2 * c["x^2"], c["xy"]], [c["xy"], 2 * c["y^2"]]])
            y_opt = float(np.linalg.solve(h, [-c["x"], -c["y"]])[1])
            out["global_batch_size"], out["batch_from"] = max(1, round(math.exp(y_opt))), "surface"
        else:  # the surface cannot place a batch size: take the measured one with the lowest predicted loss
            best = min(out["per_batch"], key=lambda r: r["loss"])
            out["global_batch_size"], out["batch_from"] = best["global_batch_size"], "measured"
        y_star = math.log(out["global_batch_size"])
    x_star = float(_lr_star(c, y_star))
    out["lr"], out["loss"] = math.exp(x_star), _predict(c, x_star, y_star)

    # Residual bootstrap with leverage-corrected, centred residuals (raw ones are too small: the fit used
    # up some of their spread); the interval is the lr at the proposed batch size.
    rng = np.random.default_rng(seed)
    lev = np.clip(np.einsum("ij,ji->i", a, pinv), 0, 1 - 1e-9)
    modified = resid / np.sqrt(1 - lev)
    modified -= modified.mean()
    boot = (fitted + rng.choice(modified, size=(n_boot, len(loss)), replace=True)) @ pinv.T
    bc = {k: boot[:, i] for i, k in enumerate(names)}
    ok = bc["x^2"] > 0
    out["boot_nonconvex"] = int(n_boot - ok.sum())
    if ok.any():
        xs = _lr_star({k: v[ok] for k, v in bc.items()}, y_star)
        out["lr_interval"] = [math.exp(float(q)) for q in np.quantile(xs, QUANTILES)]
        out["log_lr_sd"] = float(np.std(xs))

    edges = [f"lr {out['lr']:.1e} outside the measured {lrs.min():.1e} .. {lrs.max():.1e}"] if not (
        lrs.min() <= out["lr"] <= lrs.max()) else []
    if y is not None and not batches[0] <= out["global_batch_size"] <= batches[-1]:
        edges.append(f"global_batch_size {out['global_batch_size']} outside the measured "
                     f"{batches[0]} .. {batches[-1]}")
    if edges:
        out["extrapolated"] = True
        out["reason"] = "; ".join(edges) + ": at the edge of the grid: extend the sweep"
    return out


def recipe_snippet(fit: dict[str, Any]) -> str:
    """YAML to paste under the recipe's `training:`; comments only (no values) when nothing is proposed."""
    if fit["lr"] is None:
        return f"# no lr proposed: {fit['reason']}\n"
    runs = f"fitted from {fit['points_used']} short runs"
    lo_hi = fit["lr_interval"]
    interval = f"68% interval {lo_hi[0]:.2e} .. {lo_hi[1]:.2e}" if lo_hi else "no interval (no convex refit)"
    lines = [f"# {fit['reason']}"] if fit["reason"] else []
    lines += ["training:", "  pretrain:"]
    lr = f"optimizer: {{lr: {fit['lr']:.2e}}}"
    if fit["global_batch_size"] is not None:
        batch = f"global_batch_size: {fit['global_batch_size']}"
        lines += [f"    {batch:<28} # {runs}", f"    {lr:<28} # {interval}"]
    else:
        lines.append(f"    {lr:<28} # {runs}; {interval}")
    return "\n".join(lines) + "\n"


def markdown(fit: dict[str, Any]) -> str:
    """A few lines for the ablation report: the formula, the proposal, its flags and the snippet."""
    formula = " ".join(f"{v:+.4g}" if k == "1" else f"{'+' if v >= 0 else '-'} {abs(v):.4g}*{k}"
                       for k, v in fit["coef"].items()).lstrip("+")
    axes = "x = ln(lr)" + (", y = ln(global_batch_size)" if "y" in fit["coef"] else "")
    lines = [f"- fit: `loss = {formula}` ({axes}), R^2 = {fit['r2']:.3f}, {fit['points_used']} runs"
             + (f", dropped (non-finite loss): {', '.join(fit['dropped'])}" if fit["dropped"] else "")]
    if fit["lr"] is not None:
        at = (f" at global_batch_size {fit['global_batch_size']} ({fit['batch_from']})"
              if fit["global_batch_size"] is not None else "")
        lo_hi = fit["lr_interval"]
        band = (f", 68% interval {lo_hi[0]:.2e} .. {lo_hi[1]:.2e} (sd of ln lr {fit['log_lr_sd']:.2g})"
                if lo_hi else "")
        lines.append(f"- proposal: lr = {fit['lr']:.2e}{band}{at}, predicted loss {fit['loss']:.4f}")
    lines.append(f"- convex: {fit['convex']}, extrapolated: {fit['extrapolated']}, bootstrap refits not convex: "
                 f"{fit['boot_nonconvex']}/{fit['n_boot']}" + (f"; {fit['reason']}" if fit["reason"] else ""))
    return "\n".join([*lines, "", "```yaml", recipe_snippet(fit).rstrip("\n"), "```"]) + "\n"
