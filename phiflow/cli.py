"""The `phiflow` command: common operations without remembering Airflow's flags."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from phiflow import settings, shards, stages
from phiflow.airflow_api import AirflowAPI, AirflowAPIError
from phiflow.check import check_file, graph_text, warnings
from phiflow.intervals import source_partitions
from phiflow.manifest import partition_key
from phiflow.recipe import Recipe, RecipeError, load_recipe
from phiflow.storage import Lake
from phiflow.summary import failed_files, lake_status, pipeline_status, split_shards, stage_table
from phiflow.trace import trace
from phiflow.verify import report, verify_lake


def _default_recipe() -> Recipe | None:
    """PHIFLOW_RECIPE's recipe (the DAGs'), or None when it does not load: status still lists the lake."""
    try:
        return load_recipe(settings.default_recipe())
    except (RecipeError, OSError) as e:
        print(f"(no pipeline view: {e})", file=sys.stderr)
        return None


def check(path: str) -> int:
    recipe, problems = check_file(path)
    if recipe is not None:
        print(graph_text(recipe))
        for w in warnings(recipe):
            print(f"warning: {w}", file=sys.stderr)
    if problems:
        print(f"\n{path}: {len(problems)} problem(s)", file=sys.stderr)
        for line in problems:
            print(line, file=sys.stderr)
        return 1
    print(f"\n{path}: the graph closes")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="phiflow", description=__doc__)
    ap.add_argument("--lake", default=None, help="lake root (default: PHIFLOW_LAKE or .phiflow/lake)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("status", help="committed partitions per dataset; stale ones whose inputs changed since")
    st.add_argument("--pipeline", action="store_true",
                    help="first, each source's stage chain (the stage table) with committed / declared partitions")
    sub.add_parser("summary", help="per-stage table: partitions, rows in/out, drops by reason, seconds")
    v = sub.add_parser("verify", help="check that every committed partition's files exist with their recorded sizes")
    v.add_argument("datasets", nargs="*", help="datasets to check (default: the whole lake)")
    v.add_argument("--deep", action="store_true", help="also read parquet footers: rows must match the manifest")
    g = sub.add_parser("gc", help="delete attempt folders of dead writers and superseded attempts past their grace")
    g.add_argument("datasets", nargs="*", help="datasets to sweep (default: the whole lake)")
    g.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    c = sub.add_parser("check", help="prove that a recipe's stage graph closes; print it")
    c.add_argument("recipe")
    t = sub.add_parser("trace", help="follow a document id back through every stage to its origin")
    t.add_argument("doc_id")
    b = sub.add_parser("backfill", help="rerun a stage (or a whole DAG) over a date range through Airflow's REST API")
    b.add_argument("--stage", help="rerun only this stage (task) in the range; runs missing there are backfilled whole")
    b.add_argument("--dag", help="the DAG (default: the phiflow DAG that has the stage)")
    b.add_argument("--from", dest="start", required=True, help="first logical date (interval start), YYYY-MM-DD")
    b.add_argument("--to", dest="end", required=True, help="last logical date, inclusive, YYYY-MM-DD")
    b.add_argument("--downstream", action="store_true", help="with --stage: also rerun the stages after it")
    b.add_argument("--shards", help="with --stage of a sharded stage: rewrite only these shards (ids, e.g. 3,7) "
                   "of the runs' snapshots, even if committed; a plain rerun redoes only uncommitted shards")
    b.add_argument("--max-active-runs", type=int, default=1)
    b.add_argument("--dry-run", action="store_true", help="print what would be rerun, change nothing")
    b.add_argument("--url", help="API server (default PHIFLOW_AIRFLOW_URL or http://$AIRFLOW__API__HOST:PORT)")
    b.add_argument("--user", help="default PHIFLOW_AIRFLOW_USER or admin")
    b.add_argument("--password", help="default PHIFLOW_AIRFLOW_PASSWORD or the local services' generated one")
    args = ap.parse_args(argv)
    if args.cmd == "backfill":
        try:
            return backfill(args, Lake(args.lake))
        except AirflowAPIError as e:
            print(f"phiflow backfill: {e}", file=sys.stderr)
            return 1
    if args.cmd == "check":
        return check(args.recipe)
    lake = Lake(args.lake)
    if args.cmd == "status":
        recipe = _default_recipe() if args.pipeline else None
        if recipe is not None:
            print(pipeline_status(recipe, lake) + "\n")
        text, corrupt = lake_status(lake)
        print(text)
        return 1 if corrupt else 0
    if args.cmd == "verify":
        try:
            verdicts = verify_lake(lake, args.datasets, deep=args.deep)
        except ValueError as e:
            print(f"phiflow verify: {e}", file=sys.stderr)
            return 2
        print(report(verdicts))
        return 0 if all(v.ok for v in verdicts) else 1
    if args.cmd == "gc":
        return collect(lake, args.datasets, args.dry_run)
    if args.cmd == "summary":
        entries = [e for d in lake.datasets() for e in lake.entries(d)]
        in_flight, whole = split_shards(entries)
        manifests = [e.manifest for e in whole if e.manifest is not None]
        print(stage_table(manifests))
        for (dataset, key), parts in sorted(in_flight.items()):
            if (dataset, key) not in {(m.dataset, m.key) for m in manifests}:
                print(f"in progress: {dataset}/{key}: {len(parts)} shards committed, no roll-up yet")
        print(failed_files(manifests))
        for e in entries:
            if e.manifest is None:
                print(f"skipped: {e.error}", file=sys.stderr)
    elif args.cmd == "trace":
        lines = trace(lake, args.doc_id)
        print("\n".join(lines))
        return 1 if lines and "not found" in lines[-1] and len(lines) == 1 else 0
    return 0


def collect(lake: Lake, datasets: list[str], dry_run: bool) -> int:
    """`phiflow gc`: the collection each commit runs on its own partition, over every partition, so
    that a crashed attempt of a partition nobody commits again goes too."""
    try:
        names = lake.select_datasets(datasets)
    except ValueError as e:
        print(f"phiflow gc: {e}", file=sys.stderr)
        return 2
    verb = "would delete" if dry_run else "deleted"
    total = 0
    for dataset in names:
        for partition in lake.partitions_with_attempts(dataset):
            for path in lake.collect_garbage(dataset, partition, dry_run=dry_run):
                print(f"{verb} {path}")
                total += 1
    print(f"{verb} {total} attempt folders")
    return 0


def backfill(args: argparse.Namespace, lake: Lake) -> int:
    """Whole DAG: a backfill that reprocesses every run in the range. One stage: clear that task in the
    runs that exist (the UI shows them cleared, with a note) and backfill the runs that do not. With
    --shards, first leave a rerun request in each named shard of the runs' snapshots."""
    if not (args.stage or args.dag):
        print("phiflow backfill: give --stage, --dag or both", file=sys.stderr)
        return 2
    if args.shards and not args.stage:
        print("phiflow backfill: --shards needs --stage (the stage whose shards to rewrite)", file=sys.stderr)
        return 2
    api = AirflowAPI.from_env(args.url, args.user, args.password)
    dag = args.dag or api.dag_of_task(args.stage)
    if args.shards:
        request_shard_reruns(api, lake, dag, args)
    if args.stage is None:
        if args.dry_run:
            print(f"would backfill {dag} over {args.start}..{args.end}, reprocessing every run")
            return 0
        bf = api.create_backfill(dag, args.start, args.end, "completed", args.max_active_runs)
        print(f"backfill {bf['id']} of {dag} over {args.start}..{args.end} created (every run reprocessed)")
        return 0
    cleared = api.clear_tasks(dag, [args.stage], args.start, args.end, args.downstream, dry_run=args.dry_run)
    verb = "would clear" if args.dry_run else "cleared"
    for ti in cleared:
        print(f"{verb} {ti['dag_id']}.{ti['task_id']} in run {ti['dag_run_id']}")
    missing = api.missing_runs(dag, args.start, args.end)
    if missing and not args.dry_run:
        bf = api.create_backfill(dag, args.start, args.end, "none", args.max_active_runs)
        print(f"backfill {bf['id']} of {dag} created for {len(missing)} interval(s) without a run: "
              f"{', '.join(missing)}")
    elif missing:
        print(f"would backfill {dag} for {len(missing)} interval(s) without a run: {', '.join(missing)}")
    if not cleared and not missing:
        print(f"nothing to rerun: {dag} has no interval in {args.start}..{args.end}")
        return 1
    return 0


def request_shard_reruns(api: AirflowAPI, lake: Lake, dag: str, args: argparse.Namespace) -> None:
    """A rerun request in shard folders of the stage's output, for the snapshots of the DAG's runs
    in the range (their data intervals, as Airflow recorded them)."""
    recipe = _default_recipe()
    source = dag.removeprefix("phiflow_ingest_")
    if recipe is None or source not in recipe.sources:
        raise AirflowAPIError(f"--shards: {dag} is not the ingest DAG of a source of {settings.default_recipe()}")
    output = stages.io(recipe, args.stage, source).output
    ids = [shards.shard_id(int(x)) for x in args.shards.split(",") if x.strip()]
    src = recipe.sources[source]
    for run in api.dag_runs(dag):
        day = str(run.get("logical_date") or "")[:10]
        if not (args.start <= day <= args.end) or not run.get("data_interval_start"):
            continue
        start, end = (datetime.fromisoformat(run[k]) for k in ("data_interval_start", "data_interval_end"))
        for partition in source_partitions(src, start, end):
            for sid in ids:
                shard = shards.of_shard(partition, sid)
                if not args.dry_run:
                    lake.request_rerun(output, shard, by=f"phiflow backfill ({run['dag_run_id']})")
                verb = "would request" if args.dry_run else "requested"
                print(f"{verb} a rerun of {output}/{partition_key(shard)}")


if __name__ == "__main__":
    sys.exit(main())
