"""The `phiflow` command: common operations without remembering Airflow's flags."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from phiflow import settings, shards, stages
from phiflow.airflow_api import AirflowAPI, AirflowAPIError
from phiflow.backfill_plan import stage_plan
from phiflow.check import check_file, graph_text, warnings
from phiflow.manifest import parse_partition_key, partition_key
from phiflow.recipe import Recipe, RecipeError, load_recipe
from phiflow.storage import Lake
from phiflow.summary import failed_files, lake_status, pipeline_status, split_shards, stage_table
from phiflow.trace import TraceError, trace, trace_sample
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
    t = sub.add_parser("trace", help="follow a document id (or a training sequence) back to its origin")
    t.add_argument("doc_id", nargs="?", help="a doc_id of any committed dataset")
    t.add_argument("--sample", metavar="DATASET[/PARTITION]:INDEX",
                   help="start from the INDEX-th sequence of a token dataset, e.g. tokens.web.clean:0")
    b = sub.add_parser("backfill", help="rerun a stage (or a whole DAG) over a date range through Airflow's REST API")
    b.add_argument("--stage", help="rerun only this stage (task), in the runs that processed the range's partitions")
    b.add_argument("--dag", help="the DAG (default: the phiflow DAG that has the stage)")
    b.add_argument("--from", dest="start", required=True, help="first logical date (interval start), YYYY-MM-DD")
    b.add_argument("--to", dest="end", required=True, help="last logical date, inclusive, YYYY-MM-DD")
    b.add_argument("--downstream", action="store_true", help="with --stage: also rerun the stages after it")
    b.add_argument("--missing-only", action="store_true", help="without --stage: create only the runs that do "
                   "not exist (default: reprocess every interval in the range)")
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
        if bool(args.doc_id) == bool(args.sample):
            print("phiflow trace: give a DOC_ID or --sample DATASET:INDEX", file=sys.stderr)
            return 2
        try:
            lines = trace_sample(lake, args.sample) if args.sample else trace(lake, args.doc_id)
        except TraceError as e:
            print(f"phiflow trace: {e}", file=sys.stderr)
            return 2
        print("\n".join(lines))
        return 1 if "not found" in lines[-1] and "origin:" not in "\n".join(lines) else 0
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
    """Whole DAG (`--dag` alone): an Airflow backfill over the range, reprocessing every run (or, with
    --missing-only, creating only the runs that do not exist). One stage: the plan of
    phiflow.backfill_plan, printed, then carried out: the stage is cleared in the run that processed
    each partition the range names, and nothing else runs. With --shards, first leave a rerun request
    in each named shard of those partitions."""
    if not (args.stage or args.dag):
        print("phiflow backfill: give --stage, --dag or both", file=sys.stderr)
        return 2
    if args.shards and not args.stage:
        print("phiflow backfill: --shards needs --stage (the stage whose shards to rewrite)", file=sys.stderr)
        return 2
    api = AirflowAPI.from_env(args.url, args.user, args.password)
    dag = args.dag or api.dag_of_task(args.stage)
    if args.stage is None:
        reprocess = "none" if args.missing_only else "completed"
        what = "the intervals without a run" if args.missing_only else "every interval, reprocessing each run"
        print(f"{'would backfill' if args.dry_run else 'will backfill'} {dag} over {args.start}..{args.end}: {what}")
        if not args.dry_run:
            _unpaused(api, dag)
            bf = api.create_backfill(dag, args.start, args.end, reprocess, args.max_active_runs)
            print(f"backfill {bf['id']} of {dag} created")
        return 0
    runs = _stage_runs(api, dag, args)
    if args.shards:
        request_shard_reruns(lake, dag, args, runs)
    if not runs:
        print(f"nothing to rerun: no run of {dag} processed a partition of {args.start}..{args.end}")
        return 1
    if not args.dry_run:
        _unpaused(api, dag)
    for run_id in runs:
        cleared = api.clear_tasks(dag, [args.stage], run_id, args.downstream, dry_run=args.dry_run)
        for ti in cleared:
            print(f"{'would clear' if args.dry_run else 'cleared'} {ti['dag_id']}.{ti['task_id']} in run {run_id}")
    return 0


def _stage_runs(api: AirflowAPI, dag: str, args: argparse.Namespace) -> dict[str, list[str]]:
    """The runs to clear the stage in, each with the partitions it processed; the plan is printed."""
    runs = api.dag_runs(dag)
    recipe = _default_recipe()
    source = dag.removeprefix("phiflow_ingest_")
    if recipe is not None and source in recipe.sources:
        src = recipe.sources[source]
        plan = stage_plan(src, src.schedule, runs, date.fromisoformat(args.start), date.fromisoformat(args.end))
        for line in plan.lines(dag, args.stage, args.dry_run):
            print(line)
        return {r.run_id: r.partitions for r in plan.reruns}
    # an asset-scheduled DAG has no intervals: its runs whose logical date (or creation) is in the range
    chosen = {r["dag_run_id"]: [] for r in runs
              if args.start <= str(r.get("logical_date") or r.get("run_after") or "")[:10] <= args.end}
    for run_id in chosen:
        print(f"{'would clear' if args.dry_run else 'will clear'} {dag}.{args.stage} in run {run_id}")
    return chosen


def _unpaused(api: AirflowAPI, dag: str) -> None:
    """A paused DAG's cleared or backfilled runs stay queued without a word: unpause it, and say so."""
    if api.is_paused(dag):
        api.set_paused(dag, False)
        print(f"unpaused {dag}: its runs would otherwise stay queued (pause it again in the UI or with "
              f"`airflow dags pause {dag}`)")


def request_shard_reruns(lake: Lake, dag: str, args: argparse.Namespace, runs: dict[str, list[str]]) -> None:
    """A rerun request in shard folders of the stage's output, for the partitions the planned runs processed."""
    recipe = _default_recipe()
    source = dag.removeprefix("phiflow_ingest_")
    if recipe is None or source not in recipe.sources:
        raise AirflowAPIError(f"--shards: {dag} is not the ingest DAG of a source of {settings.default_recipe()}")
    output = stages.io(recipe, args.stage, source).output
    ids = [shards.shard_id(int(x)) for x in args.shards.split(",") if x.strip()]
    for run_id, partitions in runs.items():
        for p in partitions:
            for sid in ids:
                shard = shards.of_shard(parse_partition_key(p), sid)
                if not args.dry_run:
                    lake.request_rerun(output, shard, by=f"phiflow backfill ({run_id})")
                verb = "would request" if args.dry_run else "requested"
                print(f"{verb} a rerun of {output}/{partition_key(shard)}")


if __name__ == "__main__":
    sys.exit(main())
