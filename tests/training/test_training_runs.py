"""End-to-end runs through ``training.launch`` (torchrun, gloo on CPU): the tiny model learns,
TP=2 and DP=2 match TP=1, PP=2 runs, a crash-resume is bit-exact, checkpoints reshard, midtraining loads.

Each torchrun costs ~9 s of start-up here, so runs are shared through module-scoped fixtures.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phiflow.run_config import RunConfig
from training.launch import TrainingFailed, launch


def losses(metrics: dict[str, Any]) -> list[float]:
    return [s["loss"] for s in metrics["steps"]]


def run(cfg: RunConfig, work: Path, dp: int = 1) -> dict[str, Any]:
    return launch(cfg, work, dp=dp, stream=None, timeout_s=300)


@pytest.fixture(scope="module")
def baseline(
    make_run: Callable[..., RunConfig], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    """TP=1, 20 uninterrupted steps, checkpoints at 10 and 20."""
    work = tmp_path_factory.mktemp("baseline")
    cfg = make_run(
        "baseline",
        checkpoint={"save_dir": str(work / "ckpt"), "save_interval": 10},
        output={"tensorboard_dir": str(work / "tb")},
    )
    return run(cfg, work), work / "ckpt"


@pytest.fixture(scope="module")
def tp2(make_run: Callable[..., RunConfig], tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    work = tmp_path_factory.mktemp("tp2")
    cfg = make_run("tp2", tp=2, checkpoint={"save_dir": str(work / "ckpt"), "save_interval": 10})
    return run(cfg, work), work / "ckpt"


def test_tiny_model_learns(baseline: tuple[dict[str, Any], Path]) -> None:
    metrics, ckpt = baseline
    ls = losses(metrics)
    assert len(ls) == 20 and all(math.isfinite(x) for x in ls)
    assert abs(ls[0] - math.log(512)) < 0.3  # starts near uniform over the vocabulary
    assert sum(ls[-3:]) / 3 < sum(ls[:3]) / 3 - 0.5, ls
    assert math.isfinite(metrics["valid_perplexity"]) and metrics["valid_perplexity"] > 1
    steps = metrics["steps"]
    assert steps[1]["lr"] == pytest.approx(3e-3) and steps[-1]["lr"] == pytest.approx(3e-4)  # warmup, decay
    assert all(s["tokens_per_s"] > 0 and s["grad_norm"] > 0 for s in steps)
    assert (ckpt / "latest").read_text() == "20"
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000010", "iter_0000020"]


def test_tp2_matches_tp1(baseline: tuple[dict[str, Any], Path], tp2: tuple[dict[str, Any], Path]) -> None:
    assert tp2[0]["tp"] == 2
    assert losses(tp2[0]) == pytest.approx(losses(baseline[0]), rel=1e-4)


def test_dp2_matches_tp1(
    make_run: Callable[..., RunConfig], baseline: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    metrics = run(make_run("dp2"), tmp_path, dp=2)  # global batch 8 = micro 2 x accumulation 2 x dp 2
    assert metrics["dp"] == 2
    assert losses(metrics) == pytest.approx(losses(baseline[0]), rel=1e-4)


def test_pp2_runs(make_run: Callable[..., RunConfig], tmp_path: Path) -> None:
    metrics = run(make_run("pp2", steps=8, pp=2), tmp_path)
    ls = losses(metrics)
    assert metrics["pp"] == 2 and len(ls) == 8 and all(math.isfinite(x) for x in ls)
    assert ls[-1] < ls[0]


def test_nan_stops_run_then_resume_is_bit_exact(
    make_run: Callable[..., RunConfig], baseline: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    ckpt = str(tmp_path / "ckpt")
    cfg = make_run("crash", checkpoint={"save_dir": ckpt, "save_interval": 10}, inject_nonfinite_at_step=11)
    with pytest.raises(TrainingFailed, match="non-finite loss inf at step 11") as err:
        run(cfg, tmp_path / "first")
    assert err.value.metrics is not None and err.value.metrics["status"] == "failed"
    assert (Path(ckpt) / "latest").read_text() == "10"  # the poisoned step was never saved

    resumed = run(cfg.replace(inject_nonfinite_at_step=None), tmp_path / "second")
    assert resumed["resumed_from"].endswith("iter_0000010")
    assert losses(resumed) == losses(baseline[0])  # steps 1-10 from the checkpoint, 11-20 bit-exact on CPU fp32
    assert [s["step"] for s in resumed["steps"]] == list(range(1, 21))
    assert resumed["param_digests"] == baseline[0]["param_digests"]


def test_tp2_checkpoint_loads_at_tp1(
    make_run: Callable[..., RunConfig], tp2: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    src = tmp_path / "from_tp2"
    src.mkdir()
    os.symlink(tp2[1] / "iter_0000010", src / "iter_0000010")
    (src / "latest").write_text("10")
    metrics = run(make_run("reshard", tp=1, checkpoint={"load_dir": str(src)}), tmp_path / "w")
    assert metrics["tp"] == 1 and metrics["steps"][0]["step"] == 11
    assert losses(metrics)[0] == pytest.approx(losses(tp2[0])[10], rel=1e-6)


def test_midtrain_from_pretrain_checkpoint(
    make_run: Callable[..., RunConfig], baseline: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    pre = make_run("pre")
    mid = pre.midtrain(load_dir=str(baseline[1]), name="midtrain").replace(
        optimizer={"total_steps": 4, "warmup_steps": 1})
    metrics = run(mid, tmp_path)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["model"]["seq_length"] == 256 and saved["model"]["rotary_base"] == 250_000
    assert metrics["resumed_from"].endswith("iter_0000020") and metrics["final_step"] == 4
    ls = losses(metrics)
    assert all(math.isfinite(x) for x in ls)
    assert ls[0] < losses(baseline[0])[0] - 0.3  # pretrained weights were loaded
    assert metrics["steps"][0]["lr"] == pytest.approx(3e-4)  # peak LR / 10 after 1 warmup step


def test_held_out_loss_per_source(
    make_run: Callable[..., RunConfig], data_prefix: str, tokenizer: Any, tmp_path: Path
) -> None:
    """Two sources: the licence prose (most of the blend) and uniformly random tokens (a little). The
    model learns the prose; the random source stays near log(vocab): each is scored on its own split."""
    import numpy as np

    from phiflow.records.indexed_writer import write_tokens

    rng = np.random.default_rng(0)
    draws = rng.integers(0, tokenizer.vocab_size - 1, size=(200, 200))
    docs = np.where(draws >= tokenizer.eod, draws + 1, draws).tolist()  # any token but the end-of-document
    noise = str(tmp_path / "noise")
    write_tokens(noise, docs, [f"noise-{i}" for i in range(len(docs))], tokenizer.vocab_size, tokenizer.eod)
    cfg = make_run("by_source", data={"blend": [(0.9, data_prefix), (0.1, noise)],
                                      "source_names": ["licences", "noise"]})
    metrics = run(cfg, tmp_path / "w")
    by = metrics["valid_by_source"]
    assert set(by) == {"licences", "noise"}
    uniform = math.log(tokenizer.vocab_size)
    assert by["noise"]["loss"] > uniform - 0.3  # nothing to learn in random tokens
    assert by["licences"]["loss"] < by["noise"]["loss"] - 0.5  # the prose was learned
    assert by["licences"]["perplexity"] == pytest.approx(math.exp(by["licences"]["loss"]))
    # the blend-wide held-out loss lies between its sources'
    assert by["licences"]["loss"] < metrics["valid_loss"] < by["noise"]["loss"]


def test_multiple_choice_scoring_of_a_checkpoint(
    baseline: tuple[dict[str, Any], Path], corpus: list[str], tokenizer: Any, tmp_path: Path
) -> None:
    """training.mc_eval in its own process on the baseline checkpoint: a licence sentence's real
    continuation beats random-token continuations of the same length (the model learned the prose), and
    the chain rule holds: log P(a b | c) = log P(a | c) + log P(b | c a), so the logits line up with
    the tokens they predict."""
    import numpy as np

    from training.mc_eval import run_subprocess

    metrics, ckpt = baseline
    run_cfg = json.loads((ckpt.parent / "run.json").read_text())
    rng = np.random.default_rng(1)
    items = []
    for i, text in enumerate(t for t in corpus[:200:10]):
        ids = tokenizer.encode_batch([text])[0]
        if len(ids) < 24:
            continue
        ctx, cont = ids[:16], ids[16:24]
        noise = [rng.integers(1, tokenizer.vocab_size, size=8).tolist() for _ in range(3)]
        items.append({"benchmark": "licences", "id": str(i), "context": ctx, "choices": [*noise, cont], "answer": 3})
    n = len(items)
    c, a, b = items[0]["context"], items[0]["choices"][3][:4], items[0]["choices"][3][4:]
    items += [{"benchmark": f"chain_{k}", "id": k, "context": ctx, "choices": [right, [7, 7]], "answer": 0}
              for k, ctx, right in (("ab", c, a + b), ("a", c, a), ("b", c + a, b))]
    out = run_subprocess(run_cfg, str(ckpt), items, tmp_path / "mc")
    lic = out["licences"]
    assert lic["items"] == n >= 10 and lic["chance"] == pytest.approx(0.25)
    assert lic["accuracy"] >= 0.9 and lic["accuracy_norm"] >= 0.9  # real text beats random tokens
    lp = {k: out[f"chain_{k}"]["mean_logprob_right"] for k in ("ab", "a", "b")}
    assert lp["ab"] < 0 and lp["ab"] == pytest.approx(lp["a"] + lp["b"], rel=1e-4)
    assert metrics["status"] == "ok"



def test_two_phases_are_one_schedule_and_resume_bit_exact(
    make_run: Callable[..., RunConfig], baseline: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """Phase 1 trains steps 1-10 of the 20-step schedule; phase 2 loads its checkpoint whole (weights,
    Adam state, schedule, step, RNG) and trains 11-20. A fault in phase 2 at step 17 resumes from
    phase 2's own checkpoint at 15. Together they equal the uninterrupted run bit for bit, learning
    rate included: no second warmup at the boundary."""
    p1 = make_run("phase1", checkpoint={"save_dir": str(tmp_path / "p1")}, stop_at_step=10)
    first = run(p1, tmp_path / "w1")
    assert [s["step"] for s in first["steps"]] == list(range(1, 11))
    assert (tmp_path / "p1" / "latest").read_text() == "10"

    p2 = make_run("phase2", checkpoint={"save_dir": str(tmp_path / "p2"), "save_interval": 5,
                                        "load_dir": str(tmp_path / "p1")})
    with pytest.raises(TrainingFailed, match="step 17"):
        run(p2.replace(inject_nonfinite_at_step=17), tmp_path / "w2")
    second = run(p2, tmp_path / "w3")
    assert second["resumed_from"].endswith("p2/iter_0000015")
    assert [s["step"] for s in second["steps"]] == list(range(11, 21))

    steps = first["steps"] + second["steps"]
    # megatron's linear schedule: warmup to 3e-3 over 2 steps, then linear to 3e-4 at step 20
    expected = [3e-3 * n / 2 if n <= 2 else 3e-3 - 2.7e-3 * (n - 2) / 18 for n in range(1, 21)]
    assert [s["lr"] for s in steps] == pytest.approx(expected, rel=1e-9)
    assert second["steps"][0]["lr"] == pytest.approx(1.5e-3 + 1.5e-4)  # step 11: half-way down, not a rewarm
    assert losses(first) + losses(second) == losses(baseline[0])
    assert second["param_digests"] == baseline[0]["param_digests"]


def test_continuing_from_a_checkpoint_loads_weights_and_adam_moments(
    make_run: Callable[..., RunConfig], baseline: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    """An ablation point continuing from a checkpoint: its weights (low first loss), its Adam moments
    (the updates differ from a weights-only start), and its own schedule from step 1."""
    def start(name: str, moments: bool) -> dict[str, Any]:
        cfg = make_run(name, steps=3, checkpoint={"load_dir": str(baseline[1]), "finetune": True,
                                                  "load_optimizer": moments}, optimizer={"warmup_steps": 0})
        return run(cfg, tmp_path / name)

    with_moments, weights_only = start("moments", True), start("weights", False)
    base = losses(baseline[0])
    for m in (with_moments, weights_only):
        assert [s["step"] for s in m["steps"]] == [1, 2, 3] and m["resumed_from"].endswith("iter_0000020")
        assert losses(m)[0] < base[0] - 0.5  # the checkpoint's weights, not a fresh model
        assert m["steps"][0]["lr"] == pytest.approx(3e-3 - 2.7e-3 / 3)  # its own schedule, step 1 of 3
    assert losses(with_moments)[0] == losses(weights_only)[0]  # same weights, same first batch
    assert losses(with_moments)[1] != losses(weights_only)[1]  # ... but another first update
