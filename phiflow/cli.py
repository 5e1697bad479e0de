"""The `phiflow` command: common operations without remembering Airflow's flags."""

from __future__ import annotations

import argparse
import sys

from phiflow.storage import Lake
from phiflow.summary import lake_status, stage_table
from phiflow.trace import trace


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="phiflow", description=__doc__)
    ap.add_argument("--lake", default=None, help="lake root (default: PHIFLOW_LAKE or .phiflow/lake)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("status", help="committed partitions per dataset; stale ones whose inputs changed since")
    sub.add_parser("summary", help="per-stage table: partitions, rows in/out, drops by reason, seconds")
    t = sub.add_parser("trace", help="follow a document id back through every stage to its origin")
    t.add_argument("doc_id")
    args = ap.parse_args(argv)
    lake = Lake(args.lake)
    if args.cmd == "status":
        print(lake_status(lake))
    elif args.cmd == "summary":
        print(stage_table(m for d in lake.datasets() for m in lake.partitions(d)))
    elif args.cmd == "trace":
        lines = trace(lake, args.doc_id)
        print("\n".join(lines))
        return 1 if lines and "not found" in lines[-1] and len(lines) == 1 else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
