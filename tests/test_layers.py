"""The house: imports point only downward, lazy imports inside functions included.

    dags/, plugins/    assemble DAGs and the UI
    operators/         Airflow operators, hooks, triggers
    spark_jobs/        Spark stage entry points (spark_jobs/engine/: their Spark plumbing)
    training/          megatron-core stages, the training loop and its launcher
    phiflow/           the core: services (commit, CLI, dashboard, LLM clients, records/: pure per-record logic)
    contracts          the ground floor of the core: recipe schema, stage table, storage, manifest,
                       schemas, ids, run config; they import nothing of the project but each other

Read from the source (ast), so an import inside a function counts as much as one at the top; only
imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

from phiflow import stages

PACKAGES = ("phiflow", "spark_jobs", "training", "operators", "dags", "plugins")
CONTRACTS = {"phiflow", "phiflow.settings", "phiflow.manifest", "phiflow.schema", "phiflow.ids", "phiflow.shards",
             "phiflow.storage", "phiflow.recipe", "phiflow.stages", "phiflow.run_config", "phiflow.version",
             "phiflow.llm.types"}
ENGINES = ("airflow", "pyspark", "torch", "megatron")
# what each layer may not import, engines included (a package's own engine is allowed: pyspark in spark_jobs)
FORBIDDEN = {
    "contracts": {"phiflow.*", "spark_jobs", "training", "operators", "dags", "plugins", *ENGINES},
    "core": {"spark_jobs", "training", "operators", "dags", "plugins", *ENGINES},
    "spark_jobs": {"training", "operators", "dags", "plugins", "airflow", "megatron"},  # torch: the in-process LLMs
    "training": {"spark_jobs", "operators", "dags", "plugins", "airflow", "pyspark"},
    "operators": {"dags", "plugins"},
    "dags": set(),
    "plugins": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def layer(mod: str) -> str:
    top = mod.split(".")[0]
    if top == "phiflow":
        return "contracts" if mod in CONTRACTS else "core"
    return top


def _type_checking_only(tree: ast.Module) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports(mod: str, source: str | None = None) -> set[str]:
    """Every module `mod` imports, at the top or inside a function, resolved to the deepest module of
    the project it names (`from phiflow.blend import X` -> phiflow.blend), or a third-party top level."""
    path = modules().get(mod, ROOT / (mod.replace(".", "/") + ".py"))
    tree = ast.parse(source if source is not None else path.read_text())
    skip = _type_checking_only(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for name in names:
            out.add(_resolve(name))
    out.discard(mod)
    return out


def _resolve(name: str) -> str:
    if name.split(".")[0] not in PACKAGES:
        return name.split(".")[0]
    while name not in modules() and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _matches(target: str, rule: str) -> bool:
    if rule.endswith(".*"):
        return target.startswith(rule[:-1]) and target not in CONTRACTS
    return target == rule or target.startswith(rule + ".")


def test_imports_point_down() -> None:
    wrong = [f"{mod} ({layer(mod)}) imports {target}"
             for mod in sorted(modules()) for target in sorted(imports(mod))
             if any(_matches(target, rule) for rule in FORBIDDEN[layer(mod)])]
    assert wrong == []


def test_no_import_cycle() -> None:
    """No cycle among the project's modules, lazy imports counted."""
    graph = {m: {t for t in imports(m) if t in modules()} for m in modules()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*path[path.index(t):], t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_every_stage_has_one_home_and_stages_do_not_import_stages() -> None:
    """The stage table names each stage's module, which exists in its engine's folder; a stage module
    imports no other stage's module (what they share lives below them)."""
    homes = {s.module for s in stages.STAGES}
    for s in stages.STAGES:
        assert s.module in modules(), s
        assert s.module.split(".")[0] == {"spark": "spark_jobs"}.get(s.engine, "training"), s
    spark_entries = {m for m in homes if m.startswith("spark_jobs.")}
    assert {m for m in modules() if m.count(".") == 1 and m.startswith("spark_jobs.")} - {"spark_jobs.engine"} \
        == spark_entries  # spark_jobs/ holds entry points only; plumbing is spark_jobs/engine/
    sideways = [f"{m} imports {t}" for m in sorted(homes) for t in sorted(imports(m) & homes)]
    assert sideways == []


def test_core_loads_no_engine() -> None:
    """Importing every core module (records and LLM clients included) loads none of the engines."""
    core = [m for m in modules() if m.startswith("phiflow")]
    code = ("import importlib, sys\n"
            f"for m in {core!r}: importlib.import_module(m)\n"
            f"print(sorted(k for k in {ENGINES!r} if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(("source", "found"), [
    ("def f():\n    from training import mix\n", {"training", "training.mix"}),
    ("def f():\n    import airflow.sdk\n", {"airflow"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from training import mix\n", {"typing"}),
])
def test_the_check_sees_lazy_imports(source: str, found: set[str]) -> None:
    """A lazy import is an import; one under TYPE_CHECKING is not (the checker on a planted module)."""
    assert imports("phiflow.probe", source) == found
