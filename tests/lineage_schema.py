"""Validate OpenLineage events against the specification's JSON schemas (tests/data/openlineage/):
the event itself, and each dataset facet phiflow emits against its own facet schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SPEC = Path(__file__).parent / "data" / "openlineage"
# facet key -> the facet schema's file and the definition inside it
DATASET_FACETS = {"schema": ("SchemaDatasetFacet", "SchemaDatasetFacet"),
                  "columnLineage": ("ColumnLineageDatasetFacet", "ColumnLineageDatasetFacet"),
                  "version": ("DatasetVersionDatasetFacet", "DatasetVersionDatasetFacet")}
INPUT_FACETS = {"subset": ("BaseSubsetDatasetFacet", "InputSubsetInputDatasetFacet")}
OUTPUT_FACETS = {"subset": ("BaseSubsetDatasetFacet", "OutputSubsetOutputDatasetFacet"),
                 "outputStatistics": ("OutputStatisticsOutputDatasetFacet", "OutputStatisticsOutputDatasetFacet")}


def _registry() -> tuple[Registry, dict[str, dict]]:
    docs = {p.stem: json.loads(p.read_text()) for p in SPEC.glob("*.json")}
    registry = Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs.values())
    return registry, docs


REGISTRY, DOCS = _registry()


def _check(instance: Any, doc: str, definition: str) -> None:
    schema = {"$ref": f"{DOCS[doc]['$id']}#/$defs/{definition}"}
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(instance)


def validate(event: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError unless the event and its known dataset facets are valid."""
    kind = "RunEvent" if "run" in event else "DatasetEvent" if "dataset" in event else "JobEvent"
    _check(event, "OpenLineage", kind)
    for group, extra in (("inputs", ("inputFacets", INPUT_FACETS)), ("outputs", ("outputFacets", OUTPUT_FACETS))):
        for ds in event.get(group) or []:
            for key, facet in (ds.get("facets") or {}).items():
                if key in DATASET_FACETS:
                    _check(facet, *DATASET_FACETS[key])
            for key, facet in (ds.get(extra[0]) or {}).items():
                if key in extra[1]:
                    _check(facet, *extra[1][key])
