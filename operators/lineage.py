"""OpenLineage datasets built from manifests (inputs, outputs, schema and row-count facets)."""

from __future__ import annotations

from airflow.providers.common.compat.openlineage.facet import (
    Dataset,
    OutputDataset,
    OutputStatisticsOutputDatasetFacet,
    SchemaDatasetFacet,
    SchemaDatasetFacetFields,
)

from phiflow.manifest import InputRef, Manifest
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


def dataset_for(lake: Lake, dataset: str) -> Dataset:
    ns, name = _namespace_and_name(lake.uri(lake.dataset_path(dataset)))
    return Dataset(namespace=ns, name=name)


def input_dataset(lake: Lake, ref: InputRef, external_url: str | None = None) -> Dataset:
    """An input partition; `external:*` inputs (WARC listings, dumps, benchmarks) point at their URL."""
    if ref.dataset.startswith("external:"):
        ns, name = _namespace_and_name(external_url) if external_url else ("external", ref.dataset)
        return Dataset(namespace=ns, name=name)
    return dataset_for(lake, ref.dataset)


def output_dataset(lake: Lake, m: Manifest) -> OutputDataset:
    base = dataset_for(lake, m.dataset)
    fields = [SchemaDatasetFacetFields(name=f["name"], type=f["type"]) for f in m.schema]
    return OutputDataset(
        namespace=base.namespace,
        name=base.name,
        facets={"schema": SchemaDatasetFacet(fields=fields)},
        outputFacets={"outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=m.row_count, size=m.bytes)},
    )
