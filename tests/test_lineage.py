"""The OpenLineage datasets of a stage's commits: valid against the specification's JSON schemas, with
the partition read and written, the manifest digest as version, the schema of inputs and outputs, and
column lineage (identity for passed-through columns, transformation for the ones the stage computes)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from dashboard_fixtures import commit_all
from lineage_schema import validate
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.serde import Serde

from operators.lineage import manifest_lineage
from phiflow.manifest import InputRef, Manifest

SNAP = {"snapshot": "CC-MAIN-2024-10"}
EXTRACTED = [{"name": "doc_id", "type": "string"}, {"name": "url", "type": "string"},
             {"name": "text", "type": "string"}]
LANGID = [*EXTRACTED, {"name": "language", "type": "string"}, {"name": "language_score", "type": "float"}]


def committed(dataset: str, stage: str, schema: list[dict], inputs: list[InputRef]) -> Manifest:
    return Manifest(dataset=dataset, partition=dict(SNAP), stage=stage, attempt="a0", files=[], row_count=7,
                    bytes=700, schema=schema, schema_fingerprint="f", content_digest=dataset, inputs=inputs,
                    counters={"read": 7})


def event(lineage) -> dict:
    ev = RunEvent(eventType=RunState.COMPLETE, eventTime=datetime.now(UTC).isoformat(),
                  run=Run(runId=str(uuid.uuid4())), job=Job(namespace="phiflow", name="phiflow_ingest_web.langid"),
                  producer="https://github.com/phiflow", inputs=lineage.inputs, outputs=lineage.outputs)
    return Serde.to_dict(ev)


@pytest.fixture
def lake_with_langid(lake):
    ex = committed("web.extracted", "commoncrawl_extract", EXTRACTED,
                   [InputRef("external:warc_paths", dict(SNAP), "d" * 64)])
    commit_all(lake, [ex])
    li = committed("web.langid", "langid", LANGID, [ex.input_ref()])
    commit_all(lake, [li])
    return lake, ex, li


def test_stage_lineage_is_valid_and_names_partitions_schemas_and_columns(lake_with_langid) -> None:
    lake, ex, li = lake_with_langid
    ev = event(manifest_lineage(lake, [li]))
    validate(ev)
    (inp,), (out,) = ev["inputs"], ev["outputs"]
    assert inp["name"].endswith("/web.extracted") and out["name"].endswith("/web.langid")
    assert [f["name"] for f in inp["facets"]["schema"]["fields"]] == ["doc_id", "url", "text"]
    assert inp["facets"]["version"]["datasetVersion"] == ex.digest
    [part] = inp["inputFacets"]["subset"]["inputCondition"]["partitions"]
    assert part == {"dimensions": SNAP, "identifier": "snapshot=CC-MAIN-2024-10"}
    assert out["outputFacets"]["subset"]["outputCondition"]["partitions"][0]["dimensions"] == SNAP
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 7
    assert out["facets"]["version"]["datasetVersion"] == li.digest
    cols = out["facets"]["columnLineage"]["fields"]
    assert set(cols) == {"doc_id", "url", "text", "language", "language_score"}
    [lang] = cols["language"]["inputFields"]
    assert (lang["field"], lang["transformations"][0]["subtype"]) == ("text", "TRANSFORMATION")
    assert lang["name"] == inp["name"] and lang["namespace"] == inp["namespace"]
    assert cols["url"]["inputFields"][0]["transformations"][0]["subtype"] == "IDENTITY"


def test_a_generating_stage_claims_no_identity(lake_with_langid) -> None:
    """synthesize writes new text from the seed's: a TRANSFORMATION, and no column passed through."""
    lake, _, li = lake_with_langid
    out = committed("synthetic.generated", "synthesize", [{"name": "doc_id", "type": "string"},
                                                          {"name": "text", "type": "string"}], [li.input_ref()])
    ev = event(manifest_lineage(lake, [out]))
    validate(ev)
    cols = ev["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert set(cols) == {"text"} and cols["text"]["inputFields"][0]["transformations"][0]["subtype"] == (
        "TRANSFORMATION")


def test_the_validator_rejects_what_the_spec_forbids(lake_with_langid) -> None:
    lake, _, li = lake_with_langid
    ev = event(manifest_lineage(lake, [li]))
    ev["outputs"][0]["facets"]["schema"]["fields"] = "not a list"
    with pytest.raises(Exception, match="is not of type"):
        validate(ev)
