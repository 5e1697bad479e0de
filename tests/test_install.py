"""The install traps stay fixed (the layers' imports: tests/test_layers.py)."""

from __future__ import annotations

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


def test_stage_scripts_do_not_shadow_the_standard_library() -> None:
    """spark-submit puts spark_jobs/ first on sys.path: a `tokenize.py` there breaks `inspect`."""
    shadowing = [p.name for p in (ROOT / "spark_jobs").glob("*.py") if p.stem in sys.stdlib_module_names]
    assert shadowing == []
