"""Recipes with the sample Wikipedia dumps, shared by the wiki and quality tests."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import ROOT, SAMPLE, web_and_wiki_only

from phiflow.recipe import Recipe, load_recipe

WIKI = SAMPLE / "wiki"
EXPECTED = json.loads((WIKI / "EXPECTED.json").read_text())
DUMPS = [{"wiki": name, "date": "2024-06-01"} for name in EXPECTED["dumps"]]


def wiki_recipe(path: Path, stages: dict | None = None, **source: object) -> Recipe:
    """The demo recipe plus a `wiki` source over the sample dumps."""
    recipe = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    recipe["name"] = "test"
    recipe["airflow"] = {"retries": 0, "retry_delay_s": 0}
    web_and_wiki_only(recipe)
    recipe["sources"]["web"]["base_url"] = str(SAMPLE)
    recipe["sources"]["wiki"] = {"kind": "wikipedia", "base_url": str(WIKI), "dumps": DUMPS, **source}
    for stage, params in (stages or {}).items():
        recipe.setdefault("stages", {}).setdefault(stage, {}).update(params)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True))
    return load_recipe(path)
