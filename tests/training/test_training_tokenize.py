"""Tokenizer training, the indexed writer (EOD, sidecar, megatron-readable) and the CPU layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from phiflow.records.indexed_writer import read_sidecar, tokenize_to_indexed, write_tokens
from training import cpu_compat


def test_bpe_round_trip(tokenizer: Any, corpus: list[str]) -> None:
    assert tokenizer.vocab_size == 512 and tokenizer.eod == 0
    ids = tokenizer.encode_batch(corpus[:3])
    assert tokenizer.decode(ids[0]) == corpus[0]
    assert all(0 not in x for x in ids)  # EOD never comes out of plain text


def test_indexed_dataset_has_eod_and_sidecar(tmp_path: Path, tokenizer: Any, corpus: list[str]) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    texts, ids = corpus[:50], [f"doc-{i}" for i in range(50)]
    stats = tokenize_to_indexed(tmp_path / "shard", texts, ids, tokenizer, batch_size=16)
    ds = IndexedDataset(str(tmp_path / "shard"))
    assert len(ds) == stats.documents == 50 and stats.dtype == "uint16"
    expected = tokenizer.encode_batch(texts)
    for i in (0, 17, 49):
        seq = ds[i]
        assert list(seq[:-1]) == expected[i] and seq[-1] == tokenizer.eod
    side = read_sidecar(tmp_path / "shard")
    assert side.column("doc_id").to_pylist() == ids
    assert side.column("num_tokens").to_pylist() == [len(e) + 1 for e in expected]
    assert stats.tokens == sum(len(e) + 1 for e in expected)


def test_write_tokens_accepts_arrow_and_large_vocab(tmp_path: Path) -> None:
    import pyarrow as pa
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    toks = pa.array([[70_000, 5], [1]], pa.list_(pa.int32()))
    stats = write_tokens(tmp_path / "big", toks, pa.array(["a", "b"]), vocab_size=100_352, eod=100_257)
    assert stats.dtype == "int32"
    ds = IndexedDataset(str(tmp_path / "big"))
    assert list(ds[0]) == [70_000, 5, 100_257] and list(ds[1]) == [1, 100_257]


@pytest.mark.parametrize(("vocab", "docs"), [(512, 40), (100_352, 7), (512, 0)])
def test_writer_files_are_megatrons_byte_for_byte(tmp_path: Path, vocab: int, docs: int) -> None:
    """The numpy writer (no megatron import: Spark executors need no torch) writes the very .bin and .idx
    that megatron's IndexedDatasetBuilder writes for the same documents, one document per sequence."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(vocab + docs)
    lists = [rng.integers(1, vocab, size=int(rng.integers(0, 300))).tolist() for _ in range(docs)]
    write_tokens(tmp_path / "ours", lists, [f"d{i}" for i in range(docs)], vocab_size=vocab, eod=0)
    dtype = np.uint16 if vocab <= 65536 else np.int32
    theirs = IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=dtype)
    for toks in lists:
        theirs.add_document(torch.tensor([*toks, 0]), [len(toks) + 1])
    theirs.finalize(str(tmp_path / "theirs.idx"))
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"ours{ext}").read_bytes() == (tmp_path / f"theirs{ext}").read_bytes(), ext


def test_cpu_compat_redirects_only_without_gpu() -> None:
    if torch.cuda.is_available():
        assert cpu_compat.enable() is False
        return
    with cpu_compat.cpu_compat() as active:
        assert active
        assert torch.cuda.current_device() == torch.device("cpu")
        assert torch.zeros(2, device="cuda").device.type == "cpu"
        assert torch.ones(2).cuda().device.type == "cpu"
        assert torch.ones(2).to("cuda").device.type == "cpu"
        assert torch.ones(2).type() == "torch.cuda.FloatTensor"  # megatron's clip_grads assert
        torch.cuda.synchronize()
        torch.cuda.current_stream().wait_stream(None)
    assert torch.ones(2).type() == "torch.FloatTensor"
    assert np.asarray(torch.ones(1)).dtype == np.float32


def test_a_source_too_small_to_split_fails_clearly_instead_of_hanging(
    tmp_path: Path, tokenizer: Any, corpus: list[str], make_run: Any
) -> None:
    """megatron-core loops forever counting epochs of a split with no token (3 documents at 90,10,0
    leave validation none): the builder must refuse first and name the source."""
    from training.data import build_datasets, empty_splits, source_valid_datasets

    tokenize_to_indexed(tmp_path / "tiny", corpus[:3], ["a", "b", "c"], tokenizer)
    cfg = make_run("tiny", data={"blend": [(0.5, make_run("x").data.blend[0][1]), (0.5, str(tmp_path / "tiny"))],
                                 "split": "90,10,0", "source_names": ["big", "tiny"]})
    problems = empty_splits(cfg, [8, 8, 0])
    assert problems == [f"{tmp_path / 'tiny'}: 3 documents, and split 90,10,0 leaves its validation split 0 "
                        "documents with no token"]
    with pytest.raises(ValueError, match="a source too small to split"):
        build_datasets(cfg, 8, 8)
    assert set(source_valid_datasets(cfg, 8)) == {"big"}  # the tiny source is left out of per-source loss
    assert empty_splits(cfg, [8, 0, 0]) == []  # no validation samples asked: nothing to refuse


def test_a_small_source_of_a_short_run_is_built_with_enough_samples(
    tmp_path: Path, tokenizer: Any, corpus: list[str], make_run: Any
) -> None:
    """A blend of ten sources where the smallest is drawn a dozen times: megatron's per-dataset
    rounding overshoots a 5% margin (IndexError "oversamples the contributing datasets"); the margin
    grows for such a source, and stays 5% at scale."""
    from training.data import build_datasets, surplus

    assert surplus([0.5, 0.5], 10_000_000) == 0.05
    assert surplus([0.9, 0.1], 100) == pytest.approx(0.4)
    prefixes = []
    for i in range(10):
        prefix = tmp_path / f"s{i}"
        docs = corpus[i * 6:(i + 1) * 6] or corpus[:6]
        tokenize_to_indexed(prefix, docs, [f"{i}-{j}" for j in range(len(docs))], tokenizer)
        prefixes.append(str(prefix))
    weights = [0.3, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]
    cfg = make_run("ten", data={"blend": list(zip(weights, prefixes, strict=True)), "split": "80,20,0"})
    train, valid = build_datasets(cfg, 64, 16)
    assert len(train) >= 64 and len(valid) >= 16
