"""The dashboard's data and page, built only from manifests: the lake is the one source of truth.

Pure on purpose: the Airflow plugin (plugins/phiflow_dashboard.py) serves `render(build(...))`, the
tests and the bench call the same two functions on synthetic manifests. Every section is optional:
a lake that has only run extraction shows a funnel and says which sections have no data yet.
The page is server-side HTML with inline SVG/CSS (no scripts, no CDN: the UI may have no internet).
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from phiflow import shards, stages
from phiflow.manifest import Manifest, partition_key
from phiflow.storage import Lake

# Document datasets of one source, in pipeline order (the stage table's): the funnel's columns.
FUNNEL_STAGES = stages.funnel_suffixes()
EXAMPLES_SHOWN = 3  # dropped rows shown per reason
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d")


@dataclass
class FunnelStep:
    dataset: str
    read: int
    kept: int
    dropped: dict[str, int]


@dataclass
class DashboardData:
    """What the page shows; JSON-ready through `to_dict`."""

    funnel: dict[str, dict[str, list[FunnelStep]]] = field(default_factory=dict)  # source -> interval -> steps
    totals: dict[str, list[FunnelStep]] = field(default_factory=dict)  # source -> steps summed over intervals
    languages: dict[str, dict[str, int]] = field(default_factory=dict)  # source -> language -> kept docs
    topics: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # source -> before/after -> topic -> n
    contamination: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> report
    mixture: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # blend partition -> source rows
    training: list[dict[str, Any]] = field(default_factory=list)  # checkpoint partitions: name, steps [(step, loss)]
    stress: dict[str, dict[str, Any]] = field(default_factory=dict)  # stress partition -> points, gate setting
    rejected: dict[str, dict[str, Any]] = field(default_factory=dict)  # <dataset>.rejected -> kept drops by reason
    datasets: list[dict[str, Any]] = field(default_factory=list)  # every dataset: partitions, rows, bytes
    failed_files: list[dict[str, Any]] = field(default_factory=list)  # input files a stage could not read
    in_progress: list[dict[str, Any]] = field(default_factory=list)  # sharded partitions without a roll-up yet
    partitions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source_and_suffix(dataset: str) -> tuple[str, str]:
    source, _, suffix = dataset.partition(".")
    return source, suffix


def _add_step(steps: list[FunnelStep], m: Manifest) -> None:
    """Fold one manifest into the step of its dataset (creating it), summing read/kept/drops."""
    for s in steps:
        if s.dataset == m.dataset:
            break
    else:
        s = FunnelStep(m.dataset, 0, 0, {})
        steps.append(s)
    s.read += int(m.counters.get("read") or 0)
    s.kept += m.row_count
    for reason, n in (m.counters.get("dropped") or {}).items():
        s.dropped[reason] = s.dropped.get(reason, 0) + int(n)


def _funnel_order(steps: list[FunnelStep]) -> list[FunnelStep]:
    return sorted(steps, key=lambda s: FUNNEL_STAGES.index(_source_and_suffix(s.dataset)[1]))


def build(manifests: Iterable[Manifest], in_progress: Iterable[dict[str, Any]] = ()) -> DashboardData:
    """Aggregate manifests into the dashboard's sections (one pass, no data files read). `in_progress`:
    sharded partitions still missing shards (dataset, partition, committed, total)."""
    d = DashboardData(in_progress=list(in_progress))
    funnel: dict[str, dict[str, list[FunnelStep]]] = defaultdict(lambda: defaultdict(list))
    totals: dict[str, list[FunnelStep]] = defaultdict(list)
    langs: dict[str, Counter[str]] = defaultdict(Counter)
    topics: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: {"before": Counter(), "after": Counter()})
    contamination: dict[str, dict[str, Any]] = {}
    per_dataset: dict[str, dict[str, Any]] = {}
    for m in manifests:
        d.partitions += 1
        row = per_dataset.setdefault(m.dataset, {"dataset": m.dataset, "stage": m.stage, "partitions": 0,
                                                 "rows": 0, "bytes": 0, "seconds": 0.0})
        row["partitions"] += 1
        row["rows"] += m.row_count
        row["bytes"] += m.bytes
        row["seconds"] = round(row["seconds"] + float(m.timings.get("seconds") or 0), 2)
        source, suffix = _source_and_suffix(m.dataset)
        c = m.counters
        d.failed_files += [{"dataset": m.dataset, "partition": m.key, **f}
                           for f in (c.get("files") or {}).get("failed_files") or []]
        if suffix in FUNNEL_STAGES:
            _add_step(funnel[source][m.key], m)
            _add_step(totals[source], m)
        if suffix == "langid":
            langs[source].update({k: int(v) for k, v in (c.get("languages") or {}).items()})
        if suffix == "quality":
            topics[source]["before"].update(c.get("topics_before") or {})
            topics[source]["after"].update(c.get("topics_after") or {})
        if suffix == "clean":
            rep = contamination.setdefault(source, {"documents": 0, "removed": 0, "flags": 0, "by_benchmark": Counter(),
                                                    "by_rule": Counter(), "partitions": 0})
            rep["partitions"] += 1
            rep["documents"] += int(c.get("read") or 0)
            rep["flags"] += int(c.get("flags") or 0)
            rep["by_benchmark"].update(c.get("flagged_by_benchmark") or {})
            by_rule = {r: int(n) for r, n in (c.get("dropped") or {}).items() if r.startswith("contaminated_")}
            rep["by_rule"].update(by_rule)
            rep["removed"] += sum(by_rule.values())
        if m.stage == "mix" and c.get("sources"):
            d.mixture[m.key] = list(c["sources"])
        if m.dataset.startswith("checkpoints.") and c.get("losses"):
            d.training.append(_training_run(m))
        if stages.is_rejected(m.dataset):
            _add_rejected(d.rejected, m)
        if m.stage == "stress":
            d.stress[m.key] = {"points": c.get("points") or [],
                               "continue_on_divergence": (m.params.get("stress") or {}).get("continue_on_divergence")}
    d.funnel = {s: {k: _funnel_order(v) for k, v in sorted(iv.items())} for s, iv in sorted(funnel.items())}
    d.totals = {s: _funnel_order(v) for s, v in sorted(totals.items())}
    d.languages = {s: dict(c.most_common()) for s, c in sorted(langs.items())}
    d.topics = {s: {k: dict(v.most_common()) for k, v in t.items()} for s, t in sorted(topics.items())}
    d.contamination = {s: {**r, "by_benchmark": dict(r["by_benchmark"].most_common()),
                           "by_rule": dict(r["by_rule"].most_common())} for s, r in sorted(contamination.items())}
    d.datasets = [per_dataset[k] for k in sorted(per_dataset)]
    d.mixture = dict(sorted(d.mixture.items()))
    d.training.sort(key=lambda r: r["name"])
    d.rejected = dict(sorted(d.rejected.items()))
    return d


def _add_rejected(out: dict[str, dict[str, Any]], m: Manifest) -> None:
    """Fold a `<dataset>.rejected` partition in: the dropped rows it keeps per reason, and a few of them
    (their manifest carries the examples, so the page reads no data)."""
    rep = out.setdefault(m.dataset, {"stage": m.stage, "fraction": m.params.get("fraction"), "dropped": 0,
                                     "kept": 0, "reasons": {}})
    rep["dropped"] += int(m.counters.get("read") or 0)
    rep["kept"] += m.row_count
    examples = m.counters.get("examples") or {}
    for reason, n in (m.counters.get("sampled") or {}).items():
        r = rep["reasons"].setdefault(reason, {"kept": 0, "examples": []})
        r["kept"] += int(n)
        r["examples"] = (r["examples"] + list(examples.get(reason) or []))[:EXAMPLES_SHOWN]


def _training_run(m: Manifest) -> dict[str, Any]:
    """The curve of one committed training run: its checkpoint manifest holds every step's loss
    (training/train_stage.py:metrics_summary), the last step being `final_step`."""
    c = m.counters
    losses = [float(x) for x in c["losses"]]
    first = int(c.get("final_step") or len(losses)) - len(losses) + 1
    return {"name": f"{m.dataset.removeprefix('checkpoints.')} {m.key}", "final_step": c.get("final_step"),
            "final_loss": c.get("final_loss"), "valid_perplexity": c.get("valid_perplexity"),
            "tokens_per_s": c.get("mean_tokens_per_s"), "steps": [(first + i, x) for i, x in enumerate(losses)]}


def build_from_lake(lake: Lake) -> DashboardData:
    """The dashboard of a lake: every committed manifest, read once. Shards count only towards the
    progress of a snapshot without a roll-up."""
    manifests: list[Manifest] = []
    by_snapshot: dict[tuple[str, str], list[Manifest]] = {}
    for ds in lake.datasets():
        for e in lake.entries(ds):
            if e.error is not None:
                raise ValueError(e.error)  # as Lake.partitions: a corrupt manifest is not skipped silently
            parent = shards.parent(e.manifest.partition)
            if parent is None:
                manifests.append(e.manifest)
            else:
                by_snapshot.setdefault((ds, partition_key(parent)), []).append(e.manifest)
    whole = {(m.dataset, m.key) for m in manifests}
    in_progress = []
    for (ds, key), ms in sorted(by_snapshot.items()):
        if (ds, key) not in whole:
            p = shards.progress(ms, None)
            in_progress.append({"dataset": ds, "partition": key, "committed": p.committed, "total": p.total})
    return build(manifests, in_progress)


# -- rendering -----------------------------------------------------------------------------------
def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _hbars(items: dict[str, int | float], testid: str, fmt: str = "{:d}") -> str:
    """A horizontal bar chart in inline SVG: one labelled bar per item, largest first as given."""
    if not items:
        return "<p class='none'>no data</p>"
    top = max(float(v) for v in items.values()) or 1.0
    rows = []
    for i, (label, v) in enumerate(items.items()):
        w = 300 * float(v) / top
        y = i * 22
        rows.append(f"<g data-testid='{_e(testid)}:{_e(label)}'><text x='0' y='{y + 15}'>{_e(label)}</text>"
                    f"<rect x='150' y='{y + 3}' width='{w:.1f}' height='16' fill='{PALETTE[i % len(PALETTE)]}'/>"
                    f"<text x='{155 + w:.1f}' y='{y + 15}' class='v'>{_e(fmt.format(v))}</text></g>")
    return f"<svg width='560' height='{22 * len(items) + 4}' role='img'>{''.join(rows)}</svg>"


def _funnel_table(source: str, steps_by_interval: dict[str, list[FunnelStep]], totals: list[FunnelStep]) -> str:
    datasets = [s.dataset for s in totals]
    head = "".join(f"<th colspan='2'>{_e(ds)}</th>" for ds in datasets)
    sub = "<th>read</th><th>kept</th>" * len(datasets)
    body = []
    for interval, steps in [*steps_by_interval.items(), ("all intervals", totals)]:
        by = {s.dataset: s for s in steps}
        cells = []
        for ds in datasets:
            s = by.get(ds)
            key = f"funnel:{source}:{interval}:{ds}"
            if s is None:
                cells.append("<td>-</td><td>-</td>")
                continue
            drops = "; ".join(f"{r} {n}" for r, n in sorted(s.dropped.items(), key=lambda kv: -kv[1]))
            cells.append(f"<td data-testid='{_e(key)}:read'>{s.read}</td>"
                         f"<td data-testid='{_e(key)}:kept' title='dropped: {_e(drops or 'none')}'>{s.kept}</td>")
        cls = " class='total'" if interval == "all intervals" else ""
        body.append(f"<tr{cls}><td>{_e(interval)}</td>{''.join(cells)}</tr>")
    return (f"<table class='funnel'><thead><tr><th rowspan='2'>interval</th>{head}</tr><tr>{sub}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _drops_table(source: str, totals: list[FunnelStep]) -> str:
    rows = [f"<tr><td>{_e(s.dataset)}</td><td>{_e(r)}</td>"
            f"<td data-testid='drops:{_e(source)}:{_e(s.dataset)}:{_e(r)}'>{n}</td></tr>"
            for s in totals for r, n in sorted(s.dropped.items(), key=lambda kv: -kv[1])]
    if not rows:
        return "<p class='none'>nothing dropped</p>"
    return ("<table><thead><tr><th>dataset</th><th>reason</th><th>documents</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def _funnel_chart(source: str, totals: list[FunnelStep]) -> str:
    first = totals[0].read or totals[0].kept
    bars = {s.dataset: s.kept for s in totals}
    return (f"<p>documents kept after each stage (of {first} read by {_e(totals[0].dataset)})</p>"
            + _hbars(bars, f"funnel-chart:{source}"))


def _curve(run: dict[str, Any]) -> str:
    pts = run["steps"]
    if len(pts) < 2:
        return "<p class='none'>fewer than two logged steps</p>"
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = 480 / ((x1 - x0) or 1)
    sy = 160 / ((y1 - y0) or 1)
    line = " ".join(f"{40 + (x - x0) * sx:.1f},{10 + (y1 - y) * sy:.1f}" for x, y in pts)
    return (f"<svg width='540' height='200' role='img' data-testid='curve:{_e(run['name'])}'>"
            f"<polyline fill='none' stroke='#4c78a8' stroke-width='2' points='{line}'/>"
            f"<text x='0' y='16'>{y1:.3g}</text><text x='0' y='172'>{y0:.3g}</text>"
            f"<text x='40' y='192'>step {x0}</text><text x='470' y='192'>step {x1}</text></svg>")


def _growth(x: float | None) -> str:
    return "-" if x is None else f"x{x:.3g}"


def _stress(reports: dict[str, dict[str, Any]]) -> str:
    """Each stress report: a row per lr multiplier with the verdict and why, then what the gate did."""
    if not reports:
        return "<p class='none'>no stress partitions (training.stress is not set)</p>"
    out = []
    for key, rep in reports.items():
        rows = "".join(
            f"<tr><td>x{r['multiplier']:g}</td><td>{r['lr']:.3g}</td>"
            f"<td data-testid='stress:{_e(key)}:x{r['multiplier']:g}'>"
            f"{'diverged: ' + _e(r['reason']) if r['diverged'] else 'stable'}</td>"
            f"<td>{_e(r['first_loss'])} &rarr; {_e(r['final_loss'])}</td><td>{_e(r['max_grad_norm'])}</td>"
            f"<td>{_e(', '.join(map(str, r['grad_norm_spikes'])) or '-')}</td>"
            f"<td>{_growth(r['attention_logit_growth'])}</td></tr>"
            for r in rep["points"])
        diverged = [f"x{r['multiplier']:g}" for r in rep["points"] if r["diverged"]]
        gate = ("every point stable: pretraining may start" if not diverged else
                f"{', '.join(diverged)} diverged: pretraining "
                + ("went on (continue_on_divergence)" if rep["continue_on_divergence"] else "does not start"))
        out.append(f"<h3>{_e(key)}</h3><table><thead><tr><th>lr multiplier</th><th>lr</th><th>verdict</th>"
                   "<th>loss first &rarr; last</th><th>max grad norm</th><th>grad-norm spikes at</th>"
                   f"<th>attention-logit growth</th></tr></thead><tbody>{rows}</tbody></table>"
                   f"<p data-testid='stress-gate:{_e(key)}'>{_e(gate)}</p>")
    return "".join(out)


def _rejected_example(ds: str, reason: str, x: dict[str, Any]) -> str:
    where = x.get("url") or x.get("page") or x["doc_id"]
    return (f"<div data-testid='rejected-example:{_e(ds)}:{_e(reason)}'><code>{_e(where)}</code> "
            f"{_e(x.get('excerpt') or '')}</div>")


def _rejected(reports: dict[str, dict[str, Any]]) -> str:
    if not reports:
        return "<p class='none'>no rejected rows kept (recipe.rejected.fraction: 0, or no stage has run)</p>"
    out = []
    for ds, rep in reports.items():
        rows = "".join(
            f"<tr><td>{_e(reason)}</td><td data-testid='rejected:{_e(ds)}:{_e(reason)}'>{r['kept']}</td><td>"
            + "".join(_rejected_example(ds, reason, x) for x in r["examples"]) + "</td></tr>"
            for reason, r in sorted(rep["reasons"].items(), key=lambda kv: -kv[1]["kept"]))
        out.append(f"<h3>{_e(ds)} ({_e(rep['stage'])}): {rep['kept']} of {rep['dropped']} dropped rows kept "
                   f"(fraction {_e(rep['fraction'])})</h3><table><thead><tr><th>reason</th><th>kept</th>"
                   f"<th>examples</th></tr></thead><tbody>{rows}</tbody></table>")
    return "".join(out)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{_e(title)}</h2>{body}</section>"


CSS = """body{font:14px system-ui,sans-serif;margin:16px;color:#222}h1{font-size:20px}h2{font-size:16px;
border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:14px}table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.total{font-weight:bold;background:#f4f4f4}.none{color:#888;font-style:italic}svg text{font-size:12px}
svg text.v{fill:#444}.grid{display:flex;flex-wrap:wrap;gap:24px}"""


def render(d: DashboardData, title: str = "phiflow") -> str:
    """The whole page. Absent sections say so instead of disappearing, so the reader knows why."""
    parts = [f"<p data-testid='partitions'>{d.partitions} committed partitions in "
             f"{len(d.datasets)} datasets</p>"]
    if d.funnel:
        for source, by_interval in d.funnel.items():
            totals = d.totals[source]
            parts.append(_section(f"Funnel: {source}", _funnel_chart(source, totals)
                                  + _funnel_table(source, by_interval, totals) + "<h3>drops by reason</h3>"
                                  + _drops_table(source, totals)))
    else:
        parts.append(_section("Funnel", "<p class='none'>no committed document partitions yet</p>"))
    lang = "".join(f"<div><h3>{_e(s)}</h3>{_hbars(dict(list(v.items())[:15]), f'lang:{s}')}</div>"
                   for s, v in d.languages.items())
    parts.append(_section("Language mix (kept documents)", f"<div class='grid'>{lang}</div>" if lang
                          else "<p class='none'>no langid partitions</p>"))
    unscored = [s for s, t in d.topics.items() if not (set(t["before"]) | set(t["after"])) - {"none"}]
    topic = "".join(f"<div><h3>{_e(s)} {_e(k)} selection</h3>{_hbars(v, f'topic:{s}:{k}')}</div>"
                    for s, t in d.topics.items() if s not in unscored for k, v in t.items())
    if unscored:  # rules-only quality (quality.classifier: null) scores no topic: say so, not a bar of "none"
        topic += (f"<p class='none' data-testid='topics-unscored'>not scored for {_e(', '.join(unscored))}: "
                  "the recipe's quality stage runs without a classifier (quality.classifier: null)</p>")
    parts.append(_section("Topic mix", f"<div class='grid'>{topic}</div>" if topic
                          else "<p class='none'>no quality partitions</p>"))
    if d.contamination:
        rows = "".join(
            f"<tr><td>{_e(s)}</td><td>{r['documents']}</td>"
            f"<td data-testid='contamination:{_e(s)}:removed'>{r['removed']}</td>"
            f"<td>{r['flags']}</td><td>{_e(', '.join(f'{b} {n}' for b, n in r['by_benchmark'].items()) or '-')}</td>"
            f"<td>{_e(', '.join(f'{b} {n}' for b, n in r['by_rule'].items()) or '-')}</td></tr>"
            for s, r in d.contamination.items())
        body = ("<table><thead><tr><th>source</th><th>documents</th><th>removed</th><th>flags</th>"
                "<th>documents flagged by benchmark</th><th>removed by rule</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")
    else:
        body = "<p class='none'>no decontamination partitions</p>"
    parts.append(_section("Contamination", body))
    parts.append(_section("Dropped documents (rejected rows)", _rejected(d.rejected)))
    if d.mixture:
        body = "".join(
            f"<h3>{_e(key)}</h3><table><thead><tr><th>run</th><th>source</th><th>share</th><th>unique tokens</th>"
            "<th>training tokens</th><th>epochs</th></tr></thead><tbody>"
            + "".join(f"<tr><td>{_e(r['run'])}</td><td>{_e(r['source'])}</td>"
                      f"<td data-testid='mix:{_e(key)}:{_e(r['run'])}:{_e(r['source'])}:share'>{r['share']:.1%}</td>"
                      f"<td>{r['unique_tokens']}</td><td>{r['tokens']}</td><td>{r['epochs']:.2f}</td></tr>"
                      for r in rows)
            + "</tbody></table>"
            for key, rows in d.mixture.items())
    else:
        body = "<p class='none'>no mix partitions</p>"
    parts.append(_section("Mixture", body))
    parts.append(_section("Warmup stress test", _stress(d.stress)))
    runs = "".join(f"<div><h3>{_e(r['name'])}: final loss {_e(r['final_loss'])}, validation perplexity "
                   f"{_e(r['valid_perplexity'])}</h3>{_curve(r)}</div>" for r in d.training)
    parts.append(_section("Training curves (loss)", f"<div class='grid'>{runs}</div>" if runs
                          else "<p class='none'>no training metrics</p>"))
    if d.in_progress:
        rows = "".join(f"<tr><td>{_e(p['dataset'])}</td><td>{_e(p['partition'])}</td>"
                       f"<td data-testid='progress:{_e(p['dataset'])}:{_e(p['partition'])}'>{p['committed']} of "
                       f"{_e(p['total'] or '?')} shards</td></tr>" for p in d.in_progress)
        parts.append(_section("In progress", "<table><thead><tr><th>dataset</th><th>partition</th><th>committed</th>"
                              f"</tr></thead><tbody>{rows}</tbody></table>"))
    if d.failed_files:
        rows = "".join(f"<tr><td>{_e(f['dataset'])}/{_e(f['partition'])}</td><td>{_e(f['reason'])}</td>"
                       f"<td data-testid='failed-file'>{_e(f['url'])}</td><td>{_e(f.get('error') or '-')}</td></tr>"
                       for f in d.failed_files[:200])
        more = f"<p>and {len(d.failed_files) - 200} more</p>" if len(d.failed_files) > 200 else ""
        body = ("<table><thead><tr><th>partition</th><th>reason</th><th>file</th><th>error</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>{more}")
    else:
        body = "<p class='none'>no failed input files</p>"
    parts.append(_section("Failed input files", body))
    rows = "".join(f"<tr><td>{_e(r['dataset'])}</td><td>{_e(r['stage'])}</td><td data-testid='rows:{_e(r['dataset'])}'>"
                   f"{r['rows']}</td><td>{r['partitions']}</td><td>{r['bytes']}</td><td>{r['seconds']}</td></tr>"
                   for r in d.datasets)
    parts.append(_section("Datasets", "<table><thead><tr><th>dataset</th><th>stage</th><th>rows</th><th>partitions</th>"
                          f"<th>bytes</th><th>stage seconds</th></tr></thead><tbody>{rows}</tbody></table>"))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)} dashboard</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}: data pipeline</h1>{''.join(parts)}</body></html>")
