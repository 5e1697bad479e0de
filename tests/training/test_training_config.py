"""Run-config validation, JSON round trip, midtraining derivation (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.config import ConfigError, RunConfig, pad_vocab_size


def _fields(err: pytest.ExceptionInfo[ConfigError]) -> dict[str, str]:
    return dict(err.value.problems)


def _valid() -> RunConfig:
    cfg = RunConfig()
    cfg.data.blend = [(1.0, "/data/web_0")]
    return cfg


def test_default_with_blend_is_valid() -> None:
    _valid().validate(world_size=1)


def test_divisibility_errors_name_fields() -> None:
    cfg = _valid()
    cfg.parallel.tp, cfg.parallel.pp = 8, 3
    cfg.model.num_attention_heads, cfg.model.hidden_size, cfg.model.num_layers = 4, 64, 4
    with pytest.raises(ConfigError) as err:
        cfg.validate()
    f = _fields(err)
    assert "not divisible by parallel.tp=8" in f["model.num_attention_heads"]
    assert "not divisible by parallel.pp=3" in f["model.num_layers"]
    assert "model.num_attention_heads:" in str(err.value)


def test_batch_must_factor_into_micro_x_accumulation_x_dp() -> None:
    cfg = _valid()
    cfg.batch.micro_batch_size, cfg.batch.global_batch_size = 2, 6
    cfg.validate(world_size=1)  # 6 = 2 x 3 x 1
    with pytest.raises(ConfigError) as err:
        cfg.validate(world_size=2)  # dp=2: 6 is not 2 x 2 x k
    assert "data-parallel 2" in _fields(err)["batch.global_batch_size"]
    cfg.parallel.tp = 2
    with pytest.raises(ConfigError, match="world size 3 not divisible by tp\\*pp=2"):
        cfg.validate(world_size=3)
    assert cfg.batch.accumulation_steps(dp=1) == 3


def test_optimizer_data_and_checkpoint_errors() -> None:
    cfg = RunConfig()
    cfg.optimizer.min_lr, cfg.optimizer.warmup_steps, cfg.optimizer.adam_beta2 = 1.0, 100, 1.0
    cfg.data.split = "98,2"
    cfg.checkpoint.finetune = True
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
    cfg = _valid()
    cfg.model.seq_length = 0
    with pytest.raises(ConfigError, match=r"model.seq_length: must be a positive integer, got 0"):
        cfg.validate()


def test_json_round_trip_and_type_errors(tmp_path: Path) -> None:
    cfg = _valid()
    cfg.checkpoint.save_dir = "/ckpt"
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
    cfg = _valid()
    cfg.model.seq_length, cfg.optimizer.lr, cfg.optimizer.min_lr = 4096, 3e-4, 3e-5
    mid = cfg.midtrain(load_dir="/ckpt/pretrain")
    assert (mid.model.seq_length, mid.model.rotary_base) == (16384, 250_000)
    assert mid.optimizer.lr == pytest.approx(3e-5)
    assert mid.checkpoint.finetune and mid.checkpoint.load_dir == "/ckpt/pretrain"
    assert cfg.model.seq_length == 4096  # the pretraining config is untouched
    cfg.checkpoint.save_dir = "/ckpt/pretrain"
    assert cfg.midtrain(load_dir="/ckpt/pretrain").checkpoint.save_dir is None
    bad = cfg.midtrain(load_dir="/ckpt/pretrain", save_dir="/ckpt/pretrain")
    with pytest.raises(ConfigError, match=r"checkpoint.save_dir: must differ from load_dir"):
        bad.validate()
