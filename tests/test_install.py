"""The install traps stay fixed, and the layers keep their imports pointing down."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def test_pyspark_python_files_match_its_jars() -> None:
    """pyspark-client (required by the Spark provider) installs into pyspark's folder: equal versions."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    core = [p.name for p in jars.glob("spark-core_*.jar")]
    assert core and all(f"-{pyspark.__version__}.jar" in name for name in core), (pyspark.__version__, core)


def test_fasttext_predicts_under_numpy2() -> None:
    import numpy

    from phiflow.records.langid_model import default_model_path, predict

    assert int(numpy.__version__.split(".")[0]) >= 2
    langs, scores = predict(["Der schnelle braune Fuchs springt über den faulen Hund."], default_model_path())
    assert langs == ["de"] and scores[0] > 0.5


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_spark_jobs_and_training_never_import_airflow() -> None:
    for layer in ("spark_jobs", "training"):
        for path in (ROOT / layer).rglob("*.py"):
            assert "airflow" not in _imports(path), path


def test_core_imports_no_engine_at_module_level() -> None:
    modules = [f"phiflow.{p.stem}" for p in (ROOT / "phiflow").glob("*.py") if p.stem != "__init__"]
    modules += [f"phiflow.{p.parent.name}.{p.stem}".replace(".__init__", "") for p in (ROOT / "phiflow").glob("*/*.py")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(sorted(k for k in ('airflow', 'pyspark', 'torch') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_stage_scripts_do_not_shadow_the_standard_library() -> None:
    """spark-submit puts spark_jobs/ first on sys.path: a `tokenize.py` there breaks `inspect`."""
    shadowing = [p.name for p in (ROOT / "spark_jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []
