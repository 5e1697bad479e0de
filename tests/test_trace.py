"""`phiflow trace` walks the manifests' lineage: from where a document got furthest (or from a training
sequence's doc-id sidecar) back through each stage's input partition to the origin, and through the
parents of a synthetic row to its seed's own chain. Built on a hand-made lake of real committed partitions."""

from __future__ import annotations

import posixpath
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phiflow.commit import commit_files
from phiflow.manifest import InputRef, Manifest
from phiflow.trace import TraceError, trace, trace_sample

SNAP = {"snapshot": "CC-MAIN-2024-10"}
GEN = {"source": "web", "snapshot": "CC-MAIN-2024-10"}


def commit(lake, dataset: str, partition: dict, stage: str, rows: list[dict], inputs: list[InputRef],
           files: dict[str, list[dict]] | None = None, **counters) -> Manifest:
    """One partition: the rows as Parquet (or named files, e.g. a token shard's sidecars), committed."""
    attempt = lake.new_attempt(dataset, partition)
    folder = lake.attempt_path(dataset, partition, attempt)
    lake.fs.makedirs(folder, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    for name, part in (files or {"part-0.parquet": rows}).items():
        with lake.fs.open(posixpath.join(folder, name), "wb") as fh:
            pq.write_table(pa.Table.from_pylist(part), fh)
    return commit_files(lake, dataset=dataset, partition=partition, attempt=attempt, stage=stage, schema=table.schema,
                        row_count=len(rows), content=rows, inputs=inputs, recipe_digest="r", params={},
                        counters={"read": len(rows), **counters},
                        airflow={"dag_id": "d", "run_id": "r1", "task_id": stage})


def doc(i: int, **extra) -> dict:
    return {"doc_id": f"doc{i}", "source": "web", "source_uri": f"warc://crawl/f.warc.gz#{i * 100}",
            "parent_ids": [], "url": f"https://example.org/{i}", "warc_record_id": f"<urn:uuid:{i}>",
            "text": f"text {i}", **extra}


@pytest.fixture
def lake_with_synthesis(lake):
    ex = commit(lake, "web.extracted", SNAP, "commoncrawl_extract", [doc(i) for i in range(4)],
                [InputRef("external:warc_paths", dict(SNAP), "d" * 64)])
    # doc3 dropped by a stage
    clean = commit(lake, "web.clean", SNAP, "decontaminate", [doc(i) for i in range(3)], [ex.input_ref()])
    seeds = commit(lake, "synthetic.seeds", GEN, "seed_select", [doc(1)], [clean.input_ref()])
    gen = [{"doc_id": "gen0", "source": "synthetic", "source_uri": "synthetic://gen0", "parent_ids": ["doc1"],
            "text": "rewritten 1"}]
    generated = commit(lake, "synthetic.generated", GEN, "synthesize", gen, [seeds.input_ref()])
    # the token shards as tokenize lists them (the blend's order), a long-context shard beside them
    sidecars = {"b.docs.parquet": [{"sequence": 0, "doc_id": "doc0"}, {"sequence": 1, "doc_id": "doc2"}],
                "a.docs.parquet": [{"sequence": 0, "doc_id": "doc1"}],
                "long.docs.parquet": [{"sequence": 0, "doc_id": "doc2"}]}
    shard_list = [{"kind": "part", "prefix": "b", "documents": 2, "tokens": 20},
                  {"kind": "part", "prefix": "a", "documents": 1, "tokens": 9},
                  {"kind": "long", "prefix": "long", "documents": 1, "tokens": 9}]
    commit(lake, "tokens.web.clean", SNAP, "tokenize", [r for s in sidecars.values() for r in s],
           [clean.input_ref()], files=sidecars, shard_list=shard_list)
    return lake, generated


def test_a_synthetic_row_traces_through_its_seed_to_the_warc_record(lake_with_synthesis) -> None:
    lake, _ = lake_with_synthesis
    lines = trace(lake, "gen0")
    assert lines[0] == "gen0" and lines[1].startswith("  synthetic.generated/source=web/snapshot=CC-MAIN-2024-10")
    assert lines[2] == "  doc1"  # the parent, indented under the synthetic row
    chain = [ln.split()[0] for ln in lines[3:] if "  stage " in ln]
    assert chain == ["web.extracted/snapshot=CC-MAIN-2024-10", "web.clean/snapshot=CC-MAIN-2024-10",
                     "synthetic.seeds/source=web/snapshot=CC-MAIN-2024-10"]  # origin first
    (origin,) = [ln for ln in lines if "origin:" in ln]
    assert "<urn:uuid:1>" in origin and "https://example.org/1" in origin and "warc://crawl/f.warc.gz#100" in origin
    assert "read from external:warc_paths/snapshot=CC-MAIN-2024-10" in "\n".join(lines)


def test_a_dropped_document_is_found_where_it_was_last_kept(lake_with_synthesis) -> None:
    lake, _ = lake_with_synthesis
    lines = trace(lake, "doc3")
    assert [ln.split()[0] for ln in lines if "  stage " in ln] == ["web.extracted/snapshot=CC-MAIN-2024-10"]
    assert trace(lake, "nope") == [f"nope: not found in any committed partition of {lake.url}"]


def test_a_training_sequence_traces_through_the_sidecars(lake_with_synthesis) -> None:
    lake, _ = lake_with_synthesis
    lines = trace_sample(lake, "tokens.web.clean:2")  # the first sequence of the second shard
    assert lines[0].startswith("tokens.web.clean:2: sequence of document doc1 in tokens.web.clean/snapshot=")
    assert lines[1:] == trace(lake, "doc1")
    with pytest.raises(TraceError, match="holds 3 sequences"):
        trace_sample(lake, "tokens.web.clean:3")
    with pytest.raises(TraceError, match="no such partition"):
        trace_sample(lake, "tokens.web.clean/snapshot=other:0")


def test_the_cli(lake_with_synthesis) -> None:
    lake, _ = lake_with_synthesis

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "phiflow.cli", "--lake", lake.url, "trace", *args],
                              capture_output=True, text=True, timeout=120)

    ok = cli("--sample", "tokens.web.clean:0")
    assert ok.returncode == 0 and "origin: web warc://crawl/f.warc.gz#0" in ok.stdout
    assert cli("nope").returncode == 1
    bad = cli("--sample", "tokens.web.clean")
    assert bad.returncode == 2 and "DATASET[/PARTITION]:INDEX" in bad.stderr and "Traceback" not in bad.stderr
