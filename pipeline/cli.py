"""The `mmcurate` command: run a job, run one stage, list stages, audit a run, report on it."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import yaml

from .job import Job, JobError, build_stage, load_job
from .stage import describe_params, registry


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise JobError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value) if value else ""
        except yaml.YAMLError as e:
            raise JobError(f"--set {pair!r}: the value is not valid YAML: {e}") from None
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from .runner import Runner

    job = load_job(args.job)
    output = args.output or job.output
    if not output:
        raise JobError(f"{args.job}: no output directory: pass --output DIR or set 'output' in the job file")
    Runner(job, output, ray_address=args.ray_address, limit=args.limit).run()
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from .runner import Runner

    sets = _parse_sets(args.set or [])
    if args.against:
        sets["against"] = args.against
    where = f"mmcurate stage {args.name}"
    stage = build_stage(args.name, {**sets, "source": args.input}, where) \
        if "source" in _stage_fields(args.name) else None
    if stage is not None and stage.is_source:
        stages = [stage]
    else:
        stages = [build_stage("ingest_table", {"source": args.input}, where), build_stage(args.name, sets, where)]
    job = Job(name=f"stage-{args.name}", stages=stages)
    summary = Runner(job, args.output, ray_address=args.ray_address, limit=args.limit).run()
    last = summary["segments"][-1]["segment"]
    print(f"kept rows: {args.output}/stages/{last}/  rejects: {args.output}/rejects/")
    return 0


def _stage_fields(name: str) -> set[str]:
    stages = registry()
    if name not in stages:
        raise JobError(f"unknown stage {name!r}; known stages: {', '.join(stages)}")
    return set(stages[name].Params.model_fields)


def cmd_stages(args: argparse.Namespace) -> int:
    for name, cls in registry().items():
        doc = (sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        res = cls.resources
        print(f"{name}  [{cls.kind}; cpus={res.num_cpus} gpus={res.num_gpus} batch={res.batch_size}"
              f"{' concurrency=' + str(res.concurrency) if res.concurrency else ''}]")
        if doc:
            print(f"  {doc[0]}")
        for p in describe_params(cls):
            default = "(required)" if p["required"] else f"= {p['default']!r}"
            bounds = f" [{p['bounds']}]" if p["bounds"] else ""
            print(f"    {p['name']}: {p['type']} {default}{bounds}  {p['description']}")
        print()
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .ledger import audit

    result = audit(args.run_dir)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write

    print(f"report: {write(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmcurate", description="Curate multimodal data into WebDataset shards on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a job file", description="Run a job file (YAML) end to end; "
                       "a rerun skips every segment that is unchanged.")
    p.add_argument("job", help="job file, e.g. jobs/demo.yaml")
    p.add_argument("--output", help="run directory (default: the job's 'output')")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--limit", type=int, help="take only the first N inputs")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("stage", help="run one stage on a file", description=(
        "Run one registered stage on a parquet/jsonl/csv file (or, for ingest stages, on their source). "
        "Kept rows and rejects are written as parquet under OUTPUT."))
    p.add_argument("name", help="stage name (see `mmcurate stages`)")
    p.add_argument("--input", required=True, help="input file (parquet, jsonl or csv) or an ingest source")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="stage parameter (repeatable)")
    p.add_argument("--against", action="append", metavar="INDEX",
                   help="for dedup stages: an earlier run's index (RUN/index/<stage>) to remove duplicates of")
    p.add_argument("--ray-address", help="join this Ray cluster")
    p.add_argument("--limit", type=int, help="take only the first N rows")
    p.set_defaults(fn=cmd_stage)

    p = sub.add_parser("stages", help="list stages and their parameters",
                       description="List every registered stage with its parameters, defaults and bounds.")
    p.set_defaults(fn=cmd_stages)

    p = sub.add_parser("audit", help="prove that every input is in the output or the rejects",
                       description="Print a JSON summary; exit 1 if a sample is missing or appears twice.")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_audit)

    sub.add_parser("train", help="train the reference fusion model on shards (jobs/train.py; "
                   "`mmcurate train -h`)", add_help=False)

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html and report.json",
                       description="The funnel, metric histograms, the representation table and thumbnails of "
                                   "kept and rejected samples, as one self-contained HTML page and a JSON file.")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:  # the reference trainer (jobs/train.py) has its own options
        from jobs.train import main as train

        return train(argv[1:])
    from .lock import RunLocked
    from .rundir import SegmentMismatch
    from .runner import NotEnoughResources
    from .watchdog import SegmentStalled

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (JobError, OSError, ValueError, RunLocked, NotEnoughResources, SegmentStalled,
            SegmentMismatch) as e:  # SourceError is a ValueError
        if os.environ.get("MMCURATE_DEBUG"):
            raise
        print(f"mmcurate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
