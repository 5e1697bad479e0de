"""Recipe loading and validation: a bad recipe fails before anything runs, naming field and reason."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from phiflow.intervals import source_partitions as snapshot_partitions
from phiflow.recipe import RecipeError, load_recipe, parse_recipe

ROOT = Path(__file__).resolve().parents[1]


def demo_data() -> dict:
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    for src in data["sources"].values():  # parsed without a file: make the recipe's relative paths absolute
        src["base_url"] = str((ROOT / "recipes" / src["base_url"]).resolve())
    return data


def test_shipped_recipes_load() -> None:
    demo = load_recipe(ROOT / "recipes" / "demo.yaml")
    phi4 = load_recipe(ROOT / "recipes" / "phi4.yaml")
    assert [s.id for s in demo.sources["web"].snapshots] == ["CC-MAIN-2024-10", "CC-MAIN-2024-18"]
    assert phi4.sources["web"].base_url == "s3://commoncrawl/"
    assert all(s.paths == f"crawl-data/{s.id}/warc.paths.gz" for s in phi4.sources["web"].snapshots)
    assert demo.digest != phi4.digest


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda d: d.update(unknown_key=1), "unknown_key", "Extra inputs are not permitted"),
        (lambda d: d["stages"]["langid"].update(min_score=1.5), "stages.langid.min_score", "less than or equal to 1"),
        (lambda d: d["stages"]["commoncrawl_extract"].update(max_html_bytes=0), "max_html_bytes", "greater than 0"),
        (
            lambda d: d["sources"]["web"]["snapshots"][1].update(id="CC-MAIN-2024-10"),
            "sources.web.snapshots",
            "snapshot ids must be unique",
        ),
        (
            lambda d: d["sources"]["web"]["snapshots"][0].update(date="not-a-date"),
            "sources.web.snapshots.0.date",
            "valid date",
        ),
        (
            lambda d: d["sources"]["web"]["snapshots"][0].update(id="bad id!"),
            "sources.web.snapshots.0.id",
            "should match pattern",
        ),
        (lambda d: d["sources"]["web"].update(kind="gopher"), "sources.web", "does not match any of the expected tags"),
        (
            lambda d: d["sources"]["web"]["snapshots"][0].update(paths="missing/warc.paths.gz"),
            "snapshots[CC-MAIN-2024-10].paths",
            "does not exist",
        ),
        (lambda d: d.update(name="Has Spaces"), "name", "should match pattern"),
        (lambda d: d.update(sources={}), "sources", "at least one source"),
    ],
)
def test_bad_recipe_names_field_and_reason(mutate, field: str, reason: str) -> None:
    data = demo_data()
    mutate(data)
    with pytest.raises(RecipeError) as err:
        parse_recipe(data)
    assert field in str(err.value)
    assert reason in str(err.value)


def test_not_yaml_and_not_a_mapping(tmp_path: Path) -> None:
    bad = tmp_path / "r.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)
    bad.write_text("- a list\n")
    with pytest.raises(RecipeError, match="top level must be a mapping"):
        load_recipe(bad)


def test_stage_digest_changes_only_with_its_own_params() -> None:
    a = parse_recipe(demo_data())
    data = demo_data()
    data["stages"]["langid"]["min_score"] = 0.5
    b = parse_recipe(data)
    assert a.stage_digest("commoncrawl_extract") == b.stage_digest("commoncrawl_extract")
    assert a.stage_digest("langid") != b.stage_digest("langid")


def test_intervals_map_to_snapshots() -> None:
    src = parse_recipe(demo_data()).sources["web"]
    utc = dt.UTC
    feb = (dt.datetime(2024, 2, 1, tzinfo=utc), dt.datetime(2024, 3, 1, tzinfo=utc))
    mar = (dt.datetime(2024, 3, 1, tzinfo=utc), dt.datetime(2024, 4, 1, tzinfo=utc))
    assert snapshot_partitions(src, *feb) == [{"snapshot": "CC-MAIN-2024-10"}]
    assert snapshot_partitions(src, *mar) == []
    assert snapshot_partitions(src, None, None) == [{"snapshot": "CC-MAIN-2024-18"}]  # manual run: newest
    assert snapshot_partitions(src, *mar, requested="CC-MAIN-2024-10") == [{"snapshot": "CC-MAIN-2024-10"}]
    with pytest.raises(KeyError, match="unknown snapshot"):
        snapshot_partitions(src, None, None, requested="CC-MAIN-1999-01")
