"""Run-config validation, JSON round trip, midtraining derivation (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from phiflow.recipe import pad_vocab_size
from phiflow.run_config import ConfigError, RunConfig


def _fields(err: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(err.value.problems)


def _valid() -> RunConfig:
    return RunConfig().replace(data={"blend": [(1.0, "/data/web_0")]})


def test_default_with_blend_is_valid() -> None:
    _valid().validate(world_size=1)


def test_divisibility_errors_name_fields() -> None:
    cfg = _valid().replace(parallel={"tp": 8, "pp": 3},
                           model={"num_attention_heads": 4, "hidden_size": 64, "num_layers": 4})
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    f = _fields(err)
    assert "not divisible by parallel.tp=8" in f["model.num_attention_heads"]
    assert "not divisible by parallel.pp=3" in f["model.num_layers"]
    assert "model.num_attention_heads:" in str(err.value)


def test_batch_must_factor_into_micro_x_accumulation_x_dp() -> None:
    cfg = _valid().replace(batch={"micro_batch_size": 2, "global_batch_size": 6})
    cfg.validate(world_size=1)  # 6 = 2 x 3 x 1
    with pytest.raises(ConfigError) as err:
        cfg.validate(world_size=2)  # dp=2: 6 is not 2 x 2 x k
    assert "data-parallel 2" in _fields(err)["batch.global_batch_size"]
    cfg = cfg.replace(parallel={"tp": 2})
    with pytest.raises(ConfigError, match="world size 3 not divisible by tp\\*pp=2"):
        cfg.validate(world_size=3)
    assert cfg.batch.accumulation_steps(dp=1) == 3


def test_optimizer_data_and_checkpoint_errors() -> None:
    cfg = RunConfig().replace(optimizer={"min_lr": 1.0, "warmup_steps": 100, "adam_beta2": 1.0},
                              data={"split": "98,2"}, checkpoint={"finetune": True})
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    f = _fields(err)
    assert set(f) >= {
        "optimizer.min_lr",
        "optimizer.warmup_steps",
        "optimizer.adam_beta2",
        "data.blend",
        "data.split",
        "checkpoint.load_dir",
    }
    with pytest.raises(ConfigError, match=r"model.seq_length: must be a positive integer, got 0"):
        _valid().replace(model={"seq_length": 0}).validate()


def test_json_round_trip_and_type_errors(tmp_path: Path) -> None:
    cfg = _valid().replace(checkpoint={"save_dir": "/ckpt"})
    path = cfg.save(tmp_path / "run.json")
    loaded = RunConfig.load(path)
    assert loaded == cfg
    assert loaded.data.blend == [(1.0, "/data/web_0")]
    raw = json.loads(path.read_text())
    raw["model"]["hidden_size"] = "64"
    raw["optimizer"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(raw)
    f = _fields(err)
    assert f["model.hidden_size"] == "expected int, got '64'"
    assert f["optimizer.learning_rate"] == "unknown field"


def test_phi4_vocab_padding_and_midtrain() -> None:
    assert pad_vocab_size(100_277, 128) == 100_352  # tiktoken cl100k -> Phi-4's embedding size
    assert pad_vocab_size(100_277, 128, tp=8) == 100_352
    cfg = _valid().replace(model={"seq_length": 4096}, optimizer={"lr": 3e-4, "min_lr": 3e-5})
    mid = cfg.midtrain(load_dir="/ckpt/pretrain")
    assert (mid.model.seq_length, mid.model.rotary_base) == (16384, 250_000)
    assert mid.optimizer.lr == pytest.approx(3e-5)
    assert mid.checkpoint.finetune and mid.checkpoint.load_dir == "/ckpt/pretrain"
    assert cfg.model.seq_length == 4096  # the pretraining config is untouched
    cfg = cfg.replace(checkpoint={"save_dir": "/ckpt/pretrain"})
    assert cfg.midtrain(load_dir="/ckpt/pretrain").checkpoint.save_dir is None
    bad = cfg.midtrain(load_dir="/ckpt/pretrain", save_dir="/ckpt/pretrain")
    with pytest.raises(ConfigError, match=r"checkpoint.save_dir: must differ from load_dir"):
        bad.validate()


def test_the_run_sections_are_the_recipe_models() -> None:
    """What the recipe sets of the model and the optimizer (dropout, Adam's eps...) reaches the run JSON,
    what only the recipe has (the padded vocabulary it expects, dp) does not, and a bad value fails the
    recipe at load naming the recipe field. A run config changes only by copy."""
    from pydantic import ValidationError

    from phiflow.recipe import RecipeError, load_recipe, parse_recipe
    from phiflow.run_config import pretrain_config

    demo = load_recipe(Path(__file__).parents[2] / "recipes" / "demo.yaml")
    data = demo.model_dump(mode="json")
    data["training"]["pretrain"]["model"]["hidden_dropout"] = 0.1
    data["training"]["pretrain"]["optimizer"]["adam_eps"] = 1e-6
    cfg = pretrain_config(parse_recipe(data, demo.path), [(1.0, "/tokens/web")], 512, 0)
    run = cfg.to_dict()
    assert run["model"]["hidden_dropout"] == 0.1 and run["optimizer"]["adam_eps"] == 1e-6
    assert "padded_vocab_size" not in run["model"] and "dp" not in run["parallel"]
    assert RunConfig.from_dict(json.loads(json.dumps(run))) == cfg
    data["training"]["pretrain"]["model"]["hidden_dropout"] = 1.0
    with pytest.raises(RecipeError, match=r"training\.pretrain\.model\.hidden_dropout: must be in \[0, 1\), got 1.0"):
        parse_recipe(data, demo.path)
    with pytest.raises(ValidationError):
        cfg.model.num_layers = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.replace(model={"num_layer": 3})
