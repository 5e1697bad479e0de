"""tokenize on the sample (extract + langid run first, in process): shards read back with megatron's
IndexedDataset decode to the documents, sidecars map sequences to doc_ids, reruns are identical;
mix on the real token manifests, an infeasible mix refused by name; recipe training validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from phiflow.blend import blend_partition, load_blend, shard_entries, shard_prefixes, split_min_documents
from phiflow.mixture import MixtureError
from phiflow.recipe import RecipeError, load_recipe, parse_recipe
from phiflow.storage import Lake
from spark_jobs import commoncrawl_extract, langid, tokenization
from spark_jobs.engine.stage_io import StageContext
from training import mix

pytestmark = pytest.mark.spark
SNAP = {"snapshot": "CC-MAIN-2024-10"}


def ctx(recipe, lake: Lake, source: str) -> StageContext:
    return StageContext(recipe=recipe, source=source, partition=dict(SNAP), lake=lake)


@pytest.fixture(scope="module")
def tokenized(spark, test_recipe, tmp_path_factory):
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    commoncrawl_extract.run(spark, ctx(test_recipe, lake, "web"))
    langid.run(spark, ctx(test_recipe, lake, "web"))
    return lake, tokenization.run(spark, ctx(test_recipe, lake, "web.langid"))


def test_shards_read_back_with_megatron(tokenized, test_recipe) -> None:
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from phiflow.records.indexed_writer import read_sidecar
    from phiflow.tokenizer_store import resolve_tokenizer

    lake, m = tokenized
    src = lake.require("web.langid", SNAP)
    texts = dict(zip(*(lake.read_table(src, columns=["doc_id", "text"]).column(c).to_pylist()
                       for c in ("doc_id", "text")), strict=True))
    tok = resolve_tokenizer(test_recipe, lake).load()
    seen, total = [], 0
    for prefix, tokens in shard_prefixes(lake, m):
        ds, side = IndexedDataset(prefix), read_sidecar(prefix).to_pylist()
        assert len(ds) == len(side) and sum(r["num_tokens"] for r in side) == tokens
        ids = [r["doc_id"] for r in side]
        assert ids == sorted(ids)  # sorted inside a shard: the same bytes on any input layout
        for i in (0, len(ds) - 1):
            seq = ds[i]
            assert len(seq) == side[i]["num_tokens"] and seq[-1] == tok.eod
            assert tok.decode(seq[:-1].tolist()) == texts[side[i]["doc_id"]]
        seen += ids
        total += tokens
    assert sorted(seen) == sorted(texts) and m.row_count == len(texts) == m.counters["documents"]
    assert m.counters["tokens"] == total and m.counters["shards"] == 2 and m.inputs == [src.input_ref()]
    long = shard_prefixes(lake, m, "long")
    assert sum(t for _, t in long) == m.counters["long_tokens"]
    assert m.counters["long_documents"] == sum(
        r["num_tokens"] > 8192 for p, _ in shard_prefixes(lake, m) for r in read_sidecar(p).to_pylist())
    assert m.params["tokenizer"]["vocab_size"] == 512 and ds.index.dtype == np.uint16


def test_trace_from_a_training_sequence_reaches_the_warc_record(tokenized) -> None:
    """`phiflow trace --sample tokens.web.langid:N`: the N-th sequence of the token shards (through the
    doc-id sidecars; the .bin/.idx shards are not Parquet) back to its WARC record along the manifests."""
    import pyarrow.parquet as pq

    from phiflow.trace import TraceError, trace, trace_sample

    lake, m = tokenized
    (p0, _, first), (p1, _, _) = shard_entries(lake, m, "part")[:2]  # the blend's order
    assert pq.read_table(lake.fs.open(p0 + ".docs.parquet", "rb")).num_rows == first
    want = pq.read_table(lake.fs.open(p1 + ".docs.parquet", "rb")).column("doc_id")[2].as_py()  # in the second
    lines = trace_sample(lake, f"tokens.web.langid:{first + 2}")
    assert lines[0].startswith(f"tokens.web.langid:{first + 2}: sequence of document {want} in {m.dataset}/{m.key}")
    assert [ln.split()[0] for ln in lines if "  stage " in ln] == [
        "web.extracted/snapshot=CC-MAIN-2024-10", "web.langid/snapshot=CC-MAIN-2024-10"]  # origin first
    (origin,) = [line for line in lines if "origin:" in line]
    assert "warc_record_id" in origin and "url" in origin
    row = lake.read_table(lake.require("web.extracted", SNAP)).to_pylist()
    rec = next(r for r in row if r["doc_id"] == want)
    assert rec["warc_record_id"] in origin and rec["url"] in origin
    assert trace(lake, want) == lines[1:]  # by doc id: the same walk
    with pytest.raises(TraceError, match="past its end"):
        trace_sample(lake, f"tokens.web.langid:{m.counters['documents']}")


def test_rerun_gives_the_same_partition(spark, tokenized, test_recipe) -> None:
    lake, m = tokenized
    again = tokenization.run(spark, ctx(test_recipe, lake, "web.langid"))
    assert again.digest == m.digest and again.attempt != m.attempt


def mixed_recipe(test_recipe, phases=(), **mixture):
    data = test_recipe.model_dump(mode="json", exclude_none=False)
    data["mixture"] = {**data["mixture"], **mixture}
    data["training"]["pretrain"]["phases"] = list(phases)
    return parse_recipe(data, test_recipe.path)


def test_mix_commits_blend_and_refuses_infeasible(spark, tokenized, test_recipe) -> None:
    lake, _ = tokenized
    tokenization.run(spark, ctx(test_recipe, lake, "web.extracted"))
    recipe = mixed_recipe(test_recipe, sources=[
        {"name": "web", "datasets": ["web.langid"], "share": 0.7, "max_epochs": 2},
        {"name": "raw", "datasets": ["web.extracted"], "share": 0.3, "max_epochs": 2}])
    m = mix.run(recipe, lake)
    blend = load_blend(lake, m)
    weights: dict[str, float] = {}
    for w, prefix in blend["pretrain"]["blend"]:
        dataset = prefix.split("/tokens.")[1].split("/")[0]
        weights[dataset] = weights.get(dataset, 0) + w
    assert weights == pytest.approx({"web.langid": 0.7, "web.extracted": 0.3})
    mid = {s["name"]: s for s in blend["midtrain"]["mixture"]["sources"]}
    assert sum(s["share"] for n, s in mid.items() if n.startswith("long:")) == pytest.approx(0.3)
    assert sum(w for w, p in blend["midtrain"]["blend"] if "/long-" in p) == pytest.approx(0.3)
    assert {f.path.rsplit("/", 1)[1] for f in m.files} == {"blend.json", "blend.csv", "blend.md", "blend.png"}
    assert m.row_count == 2 + 4 and mix.run(recipe, lake).attempt == m.attempt  # unchanged: nothing to do
    tight = mixed_recipe(test_recipe, sources=[  # 15,360 training tokens of ~1M unique: 0.01 epochs
        {"name": "web", "datasets": ["web.langid"], "share": 1.0, "max_epochs": 0.001}])
    with pytest.raises(MixtureError, match=r"pretrain mixture: source 'web': .* exceeds max_epochs=0.001"):
        mix.run(tight, lake)
    attempts = lake.fs.ls(lake.attempt_path("blend", blend_partition(tight), ""), detail=False)
    assert [a.rstrip("/").rsplit("/", 1)[1] for a in attempts] == [m.attempt]  # the failed run left nothing


def test_stale_tokens_are_refused(tokenized, test_recipe) -> None:
    lake, _ = tokenized
    recipe = mixed_recipe(test_recipe, sources=[{"name": "x", "datasets": ["web.dedup"], "share": 1.0}])
    with pytest.raises(MixtureError, match=r"web\.dedup has no committed partition"):
        mix.run(recipe, lake)


@pytest.mark.parametrize(("path", "value", "field"), [
    (("training", "pretrain", "model", "hidden_size"), 130, "training.pretrain.model.hidden_size"),
    (("training", "pretrain", "parallel", "tp"), 3, "training.pretrain.model.num_attention_heads"),
    (("training", "pretrain", "global_batch_size"), 7, "training.pretrain.global_batch_size"),
    (("training", "midtrain", "lr_factor"), 2.0, "training.midtrain.lr_factor"),
    (("mixture", "total_tokens"), 999, "mixture.total_tokens"),
    (("training", "midtrain", "long_doc_tokens"), 16, "training.midtrain.long_doc_tokens"),
])
def test_recipe_training_errors_name_the_field(test_recipe, path, value, field) -> None:
    data = json.loads(json.dumps(test_recipe.model_dump(mode="json")))
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        parse_recipe(data, test_recipe.path)


def test_phi4_recipe_carries_the_report_figures() -> None:
    from pathlib import Path

    from phiflow import run_config

    r = load_recipe(Path(__file__).parents[1] / "recipes" / "phi4.yaml")
    assert run_config.world_size(r) == 1920 and run_config.pretrain_tokens(r) == 10**13
    assert abs(run_config.midtrain_tokens(r) - 250e9) < 0.001 * 250e9
    assert {s.name: s.share for s in r.mixture.sources} == {
        "web": 0.15, "web_rewrites": 0.15, "synthetic": 0.4, "code": 0.2, "acquired": 0.1}


def test_fixed_subsample_is_repeated_for_its_epochs(tokenized, test_recipe, tmp_path) -> None:
    """`subsample_tokens` (what an epochs axis sets): the source trains on one fixed subsample of whole
    documents, so its epochs are training tokens / subsample tokens, not / everything it has."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from phiflow.records.indexed_writer import read_sidecar
    from training.mix import subsample

    lake, _ = tokenized
    m = lake.require("tokens.web.langid", SNAP)  # the current partition (an earlier test rewrote it)
    unique = m.counters["tokens"]
    target = unique // 5
    recipe = mixed_recipe(test_recipe, sources=[
        {"name": "web", "datasets": ["web.langid"], "share": 1.0, "subsample_tokens": target}])
    with pytest.raises(MixtureError, match="subsample_tokens needs a subsampler"):
        mix.run(recipe, lake)
    b = mix.run(recipe, lake, subsample=subsample)
    (src,) = load_blend(lake, b)["pretrain"]["mixture"]["sources"]
    ((prefix, tokens),) = src["shards"]
    assert src["unique_tokens"] == tokens >= target
    assert src["epochs"] == pytest.approx(src["tokens"] / tokens)
    side = read_sidecar(prefix).to_pylist()
    assert sum(r["num_tokens"] for r in side) == tokens and len(IndexedDataset(prefix)) == len(side)
    assert tokens - max(r["num_tokens"] for r in side) < target  # whole documents, stopped once past the target
    originals = {r["doc_id"]: (p, r["sequence"]) for p, _ in shard_prefixes(lake, m)
                 for r in read_sidecar(p).to_pylist()}
    ds = IndexedDataset(prefix)
    readers = {p: IndexedDataset(p) for p, _ in originals.values()}  # alive while their mmap'd arrays are read
    for i, r in enumerate(side[:5]):  # the very documents, token for token
        p, seq = originals[r["doc_id"]]
        assert ds[i].tolist() == readers[p][seq].tolist()
    assert prefix.startswith(lake.partition_path("blend", {"recipe": recipe.name}))  # committed with the blend
    tok = m.params["tokenizer"]
    again = subsample(shard_prefixes(lake, m), target, str(tmp_path / "again"), tok["vocab_size"], tok["eod"])
    assert again[1] == tokens and Path(again[0] + ".bin").read_bytes() == Path(prefix + ".bin").read_bytes()


def test_small_shards_of_a_source_are_merged_so_every_split_holds_a_document(tokenized, test_recipe, tmp_path) -> None:
    """Synthetic datasets have one small partition per seeding source; a shard of 2 documents has no
    validation document under split 90,10,0, so the mix stage merges a group's shards when one is too
    small, keeping every document, token for token."""
    from phiflow.records.indexed_writer import read_sidecar
    from training.mix import subsample

    lake, _ = tokenized
    m = lake.require("tokens.web.langid", SNAP)
    tok = m.params["tokenizer"]
    assert split_min_documents("90,10,0") == 5 and split_min_documents("80,20,0") == 3
    assert split_min_documents("98,2,0") == 25
    entries = shard_entries(lake, m)
    assert sum(d for _, _, d in entries) == m.counters["documents"]
    merge = mix.Merger(subsample, str(tmp_path), 5, tok["vocab_size"], tok["eod"])
    assert merge("part:web", entries) == tuple((p, t) for p, t, _ in entries)  # every shard is big enough
    tiny = (*entries, (entries[0][0], entries[0][1], 2))  # one more shard of 2 documents
    ((prefix, tokens),) = merge("part:web", tiny)
    assert tokens == sum(t for _, t, _ in tiny)
    merged = read_sidecar(prefix).to_pylist()
    assert len(merged) == sum(len(read_sidecar(p)) for p, _, _ in tiny)


def test_phases_mix_their_own_shares_and_the_run_holds_max_epochs(spark, tokenized, test_recipe) -> None:
    """Each phase is blended at its own shares over its own tokens; the whole run sums them, and a
    source's max_epochs holds over the run, not per phase."""
    lake, _ = tokenized
    tokenization.run(spark, ctx(test_recipe, lake, "web.extracted"))
    sources = [{"name": "web", "datasets": ["web.langid"], "share": 0.5},
               {"name": "raw", "datasets": ["web.extracted"], "share": 0.5}]
    phases = [{"name": "one", "fraction": 0.5, "mixture": {"web": 0.9, "raw": 0.1}},
              {"name": "two", "fraction": 0.5, "mixture": {"web": 0.2, "raw": 0.8}}]
    m = mix.run(mixed_recipe(test_recipe, phases, sources=sources), lake)
    blend = load_blend(lake, m)
    half = 15 * 8 * 64
    for run, raw_share in (("pretrain.one", 0.1), ("pretrain.two", 0.8)):
        shares = {s["name"]: s for s in blend[run]["mixture"]["sources"]}
        assert blend[run]["mixture"]["total_tokens"] == half and shares["raw"]["tokens"] == round(raw_share * half)
        assert sum(w for w, p in blend[run]["blend"] if "tokens.web.extracted" in p) == pytest.approx(raw_share)
    whole = {s["name"]: s for s in blend["pretrain"]["mixture"]["sources"]}
    assert whole["raw"]["tokens"] == round(0.1 * half) + round(0.8 * half)
    assert whole["raw"]["share"] == pytest.approx(0.45)
    rows = {(r["run"], r["source"]) for r in m.counters["sources"]}
    assert {("pretrain.one", "raw"), ("pretrain.two", "raw"), ("pretrain", "raw")} <= rows
    unique = whole["raw"]["unique_tokens"]
    cap = 0.9 * whole["raw"]["tokens"] / unique  # each phase under it, the two together over it
    tight = [{**sources[0]}, {**sources[1], "max_epochs": cap}]
    with pytest.raises(MixtureError, match=r"pretrain \(all phases\): source 'raw': .* exceeds max_epochs"):
        mix.run(mixed_recipe(test_recipe, phases, sources=tight), lake)
