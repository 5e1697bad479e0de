"""The benchmark files' multiple-choice items (what the ablation evaluation scores) and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phiflow import benchmarks
from phiflow.recipe import load_recipe, parse_recipe

DEMO = "recipes/demo.yaml"


def test_demo_benchmarks_yield_their_mc_items() -> None:
    items, digests = benchmarks.mc_items(load_recipe(DEMO))
    assert sorted(digests) == ["arith", "cloze"]  # reading has no `mc` fields: decontamination only
    by = {b: [i for i in items if i.benchmark == b] for b in digests}
    assert len(by["arith"]) == 60 and len(by["cloze"]) == 16
    for it in items:
        assert len(set(it.choices)) == 4 and 0 <= it.answer < 4
    first = json.loads(Path("data/benchmarks/arith.jsonl").read_text().splitlines()[0])
    assert by["arith"][0].choices[by["arith"][0].answer].strip() == first["answer"]  # the right one is right


def test_bad_item_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "q1", "q": "2+2?", "opts": ["4", "5"], "a": 2}) + "\n")
    data = load_recipe(DEMO).model_dump(mode="json")
    data["stages"]["decontaminate"]["benchmarks"] = [
        {"name": "tiny", "path": str(bad), "text_fields": ["q"],
         "mc": {"context": "q", "choices": "opts", "answer": "a"}}]
    with pytest.raises(ValueError, match=r"benchmark tiny: item 'q1' needs >= 2 choices and an answer index"):
        benchmarks.mc_items(parse_recipe(data, load_recipe(DEMO).path))
