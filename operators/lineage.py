"""OpenLineage datasets built from manifests: every input and output names its dataset, the partition
read or written (the standard `subset` facet), the manifest digest as its version, its schema, and, for
outputs, row counts and column lineage (which input column each output column came from).

The facets are the OpenLineage client's own classes, so the provider serializes them with the right
`_schemaURL`; tests/lineage_schema.py validates emitted events against the specification's JSON schemas.
"""

from __future__ import annotations

from typing import Any

from openlineage.client.generated.base import InputDataset, OutputDataset
from openlineage.client.generated.base_subset_dataset import (
    InputSubsetInputDatasetFacet,
    OutputSubsetOutputDatasetFacet,
    Partition,
    PartitionSubsetCondition,
)
from openlineage.client.generated.column_lineage_dataset import (
    ColumnLineageDatasetFacet,
    Fields,
    InputField,
    Transformation,
)
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.output_statistics_output_dataset import OutputStatisticsOutputDatasetFacet
from openlineage.client.generated.schema_dataset import SchemaDatasetFacet, SchemaDatasetFacetFields

from phiflow import stages
from phiflow.manifest import InputRef, Manifest, parse_partition_key, partition_key
from phiflow.recipe import Recipe
from phiflow.storage import Lake


def _namespace_and_name(url: str) -> tuple[str, str]:
    """OpenLineage naming: `file` + absolute path for local files, `scheme://authority` + path otherwise."""
    if "://" not in url:
        return "file", url
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        return "file", "/" + rest.lstrip("/")
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", "/" + path


def external_location(recipe: Recipe, source: str, ref: InputRef) -> str | None:
    """Where an `external:*` input lives: a file named in the ref, a WARC listing, a dump, a collection."""
    if not ref.dataset.startswith("external:"):
        return None
    if "path" in ref.partition:
        return recipe.resolve(ref.partition["path"])
    src = recipe.sources.get(source)
    if src is None or src.partition_key not in ref.partition:
        return None
    return f"{recipe.resolve(src.base_url).rstrip('/')}/{src.location(ref.partition[src.partition_key])}"


def _where(lake: Lake, ref: InputRef, external_url: str | None) -> tuple[str, str]:
    if ref.dataset.startswith("external:"):
        return _namespace_and_name(external_url) if external_url else ("external", ref.dataset)
    return _namespace_and_name(lake.uri(lake.dataset_path(ref.dataset)))


def _partition(partition: dict[str, str]) -> PartitionSubsetCondition:
    return PartitionSubsetCondition(partitions=[Partition(dimensions=dict(partition),
                                                          identifier=partition_key(partition))])


def _schema(fields: list[dict[str, str]]) -> SchemaDatasetFacet:
    return SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=f["name"], type=f["type"]) for f in fields])


def _read_manifest(lake: Lake, ref: InputRef) -> Manifest | None:
    """The input's manifest, for its schema; None for external inputs and partitions gone since."""
    if ref.dataset.startswith("external:"):
        return None
    try:
        return lake.manifest(ref.dataset, ref.partition)
    except (OSError, ValueError):
        return None


def input_dataset(lake: Lake, ref: InputRef, external_url: str | None = None) -> InputDataset:
    """An input partition; `external:*` inputs (WARC listings, dumps, benchmarks) point at their URL."""
    ns, name = _where(lake, ref, external_url)
    facets: dict[str, Any] = {"version": DatasetVersionDatasetFacet(datasetVersion=ref.digest)}
    read = _read_manifest(lake, ref)
    if read is not None and read.schema:
        facets["schema"] = _schema(read.schema)
    input_facets = {} if ref.dataset.startswith("external:") else {
        "subset": InputSubsetInputDatasetFacet(inputCondition=_partition(ref.partition))}
    return InputDataset(namespace=ns, name=name, facets=facets, inputFacets=input_facets)


def column_lineage(lake: Lake, m: Manifest) -> ColumnLineageDatasetFacet | None:
    """Each output column from the input columns its stage derives it from (the stage table's `derives`:
    language from text, ...), or, for a stage that passes its input's columns through, from the main
    input's column of the same name (identity). Columns neither covers get no claim."""
    main = next((ref for ref in m.inputs if not ref.dataset.startswith("external:")), None)
    read = _read_manifest(lake, main) if main is not None else None
    if main is None or read is None:
        return None
    ns, name = _where(lake, main, None)
    available = {f["name"] for f in read.schema}
    try:
        entry = stages.stage(m.stage)
    except KeyError:  # not in the stage table (evaluation, reports): no column claims
        return None
    derives, passes = dict(entry.derives), entry.passes_columns
    fields: dict[str, Fields] = {}
    for f in m.schema:
        col = f["name"]
        if col in derives and set(derives[col]) <= available:
            fields[col] = Fields(inputFields=[
                InputField(namespace=ns, name=name, field=src,
                           transformations=[Transformation(type="DIRECT", subtype="TRANSFORMATION")])
                for src in derives[col]])
        elif passes and col in available:
            fields[col] = Fields(inputFields=[
                InputField(namespace=ns, name=name, field=col,
                           transformations=[Transformation(type="DIRECT", subtype="IDENTITY")])])
    return ColumnLineageDatasetFacet(fields=fields) if fields else None


def output_dataset(lake: Lake, m: Manifest) -> OutputDataset:
    ns, name = _namespace_and_name(lake.uri(lake.dataset_path(m.dataset)))
    facets: dict[str, Any] = {"schema": _schema(m.schema),
                              "version": DatasetVersionDatasetFacet(datasetVersion=m.digest)}
    columns = column_lineage(lake, m)
    if columns is not None:
        facets["columnLineage"] = columns
    return OutputDataset(
        namespace=ns,
        name=name,
        facets=facets,
        outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=m.row_count, size=m.bytes),
                      "subset": OutputSubsetOutputDatasetFacet(outputCondition=_partition(m.partition))},
    )


def tokenizer_lineage(lake: Lake, info: dict[str, Any], trained_on: list[dict[str, str]]):
    """The tokenizer task: the text partitions the BPE was trained on, and the tokenizer file."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    inputs = [input_dataset(lake, InputRef(t["dataset"], parse_partition_key(t["partition"]), t["digest"]))
              for t in trained_on]
    outputs = []
    if info.get("location"):
        ns, name = _namespace_and_name(str(info["location"]))
        outputs.append(OutputDataset(namespace=ns, name=name, facets={
            "version": DatasetVersionDatasetFacet(datasetVersion=str(info["digest"]))}))
    return OperatorLineage(inputs=inputs, outputs=outputs)


def manifest_lineage(lake: Lake, committed: list[Manifest], recipe: Recipe | None = None, source: str = ""):
    """The OperatorLineage of a task: the inputs of what it committed (once each) and the commits."""
    from airflow.providers.openlineage.extractors import OperatorLineage

    seen: set[tuple[str, str, str]] = set()
    inputs = []
    for m in committed:
        for ref in m.inputs:
            key = (ref.dataset, partition_key(ref.partition), ref.digest)
            if key not in seen:
                seen.add(key)
                url = external_location(recipe, source, ref) if recipe is not None else None
                inputs.append(input_dataset(lake, ref, url))
    return OperatorLineage(inputs=inputs, outputs=[output_dataset(lake, m) for m in committed])
