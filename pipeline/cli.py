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
    summary = Runner(job, output, ray_address=args.ray_address, limit=args.limit, until=args.until,
                     start=getattr(args, "from")).run()
    return _empty(summary, args.fail_if_empty)


def cmd_refresh(args: argparse.Namespace) -> int:
    from .release import refresh

    refresh(load_job(args.job), args.dataset, ray_address=args.ray_address)
    return 0


def _lines(path: str | None) -> list[str]:
    if not path:
        return []
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


def cmd_takedown(args: argparse.Namespace) -> int:
    from .release import record_takedown

    entry = record_takedown(args.dataset, _lines(args.ids), _lines(args.sources), _lines(args.content),
                            purge=args.purge)
    if args.purge:
        print(json.dumps({"purged": entry["purged"]}, indent=1))
    return 0


def _empty(summary: dict[str, Any], fail: bool) -> int:
    if fail and not summary["kept"]:
        print(f"mmcurate: error: the run kept no sample (--fail-if-empty); see `mmcurate rejects "
              f"{summary['output']}`", file=sys.stderr)
        return 1
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from .runner import Runner
    from .table import IngestTable

    sets = _parse_sets(args.set or [])
    fields = _stage_fields(args.name)
    if args.against:
        if "against" not in fields:
            raise JobError(f"stage {args.name!r} takes no --against (it keeps no index)")
        sets["against"] = args.against
    where = f"mmcurate stage {args.name}"
    stage = build_stage(args.name, {**sets, "source": args.input}, where) if "source" in fields else None
    if stage is not None and stage.is_source:
        stages = [stage]
    else:  # the engine's table reader feeds any other stage
        stages = [build_stage(IngestTable.name, {"source": args.input}, where), build_stage(args.name, sets, where)]
    job = Job(name=f"stage-{args.name}", stages=stages)
    summary = Runner(job, args.output, ray_address=args.ray_address, limit=args.limit).run()
    last = summary["segments"][-1]["segment"]
    print(f"kept rows: {args.output}/stages/{last}/  rejects: {args.output}/rejects/")
    print(f"next: mmcurate stage STAGE --input {args.output} --output {args.output.rstrip('/')}-next")
    return _empty(summary, args.fail_if_empty)


def _stage_fields(name: str) -> set[str]:
    stages = registry()
    if name not in stages:
        raise JobError(f"unknown stage {name!r}; known stages: {', '.join(stages)}")
    return set(stages[name].Params.model_fields)


def cmd_stages(args: argparse.Namespace) -> int:
    stages = registry()
    if args.name and args.name not in stages:
        raise JobError(f"unknown stage {args.name!r}; known stages: {', '.join(stages)}")
    for name, cls in stages.items():
        if args.name and name != args.name:
            continue
        describe_stage(name, cls)
    return 0


def describe_stage(name: str, cls) -> None:
    """A stage's summary, resources (with its defaults), columns and parameters."""
    text = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
    doc = [" ".join(line.strip() for line in text.split("\n\n")[0].splitlines())] if text else []
    res = cls.resources.model_copy()
    defaults = cls.Params.model_construct()
    for key in ("num_cpus", "num_gpus", "concurrency", "batch_size"):
        if getattr(defaults, key, None) is not None:
            setattr(res, key, getattr(defaults, key))
    print(f"{name}  [{cls.kind}; cpus={res.num_cpus} gpus={res.num_gpus} batch={res.batch_size}"
          f"{' concurrency=' + str(res.concurrency) if res.concurrency else ''}]")
    if doc:
        print(f"  {doc[0]}")
    reads, adds = _declared(cls)
    print(f"  reads: {', '.join(reads) or '-'}")
    print(f"  adds:  {', '.join(adds) or ('the columns of its input' if cls.open_columns else '-')}")
    for p in describe_params(cls):
        default = "(required)" if p["required"] else f"= {p['default']!r}"
        bounds = f" [{p['bounds']}]" if p["bounds"] else ""
        print(f"    {p['name']}: {p['type']} {default}{bounds}  {p['description']}")
    print()


def _declared(cls) -> tuple[list[str], list[str]]:
    """The columns a stage reads and adds with its default parameters."""
    from .job import _makers  # noqa: F401 - same construction as the job check's hint

    try:
        stage = object.__new__(cls)
        stage.params = cls.Params.model_construct()
        def member(c) -> str:
            fmt = f", extension from {c.format[1:]}" if c.format.startswith("@") else f", .{c.format}" if c.format \
                else ""
            return f"{c.name} ({c.kind}{fmt})" if c.kind != "value" else c.name

        return cls.reads(stage), [member(c) for c in cls.adds(stage)]
    except Exception:  # noqa: BLE001 - declarations that need a required parameter
        return ["(depends on its parameters)"], ["(depends on its parameters)"]


def cmd_status(args: argparse.Namespace) -> int:
    from .inspect import format_status, status

    result = status(args.run_dir)
    print(json.dumps(result, indent=1) if args.json else format_status(result))
    return 0 if result["complete"] else 1


def cmd_rejects(args: argparse.Namespace) -> int:
    from .inspect import format_rejects, rejects

    result = rejects(args.run_dir, args.stage, args.reason, args.show)
    print(json.dumps(result, indent=1, default=str) if args.json else format_rejects(result))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .inspect import format_plan, plan

    job = load_job(args.job)
    result = plan(job, args.output or (job.output if args.output is None and job.output and
                                       os.path.isdir(job.output) else None))
    print(json.dumps(result, indent=1) if args.json else format_plan(result))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from .ledger import audit

    result = audit(args.run_dir)
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


def cmd_report(args: argparse.Namespace) -> int:
    from . import fs
    from .release import is_dataset
    from .report import write, write_releases

    if is_dataset(args.run_dir) and not fs.exists(fs.join(args.run_dir, "summary.json")):  # a dataset: its releases
        print(f"report: {write_releases(args.run_dir)}")
        return 0
    print(f"report: {write(args.run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="mmcurate", description="Curate multimodal data into WebDataset shards on Ray.")
    parser.add_argument("--version", action="version", version=f"mmcurate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run a job file", description="Run a job file (YAML) end to end; "
                       "a rerun skips every segment that is unchanged.")
    p.add_argument("job", help="job file, e.g. jobs/demo.yaml")
    p.add_argument("--output", help="run directory (default: the job's 'output')")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)")
    p.add_argument("--limit", type=int, help="take only the first N inputs")
    p.add_argument("--until", metavar="STAGE", help="stop after the segment that holds this stage")
    p.add_argument("--from", metavar="STAGE", help="redo from the segment that holds this stage on (the segments "
                   "before it must be committed with this job's settings)")
    p.add_argument("--fail-if-empty", action="store_true", help="exit 1 when the run keeps no sample")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("refresh", help="make the next release of a published dataset",
                       description="Run the job on the inputs DIR has not published yet, deduplicated against "
                                   "every earlier release, and publish DIR/releases/vNNNN (shards numbered on, "
                                   "earlier shards by reference) and DIR/latest. The first refresh is a full run.")
    p.add_argument("job", help="job file ending with shard_webdataset")
    p.add_argument("--dataset", required=True, metavar="DIR", help="the dataset folder (local or s3://)")
    p.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else an embedded Ray)")
    p.set_defaults(fn=cmd_refresh)

    p = sub.add_parser("takedown", help="take samples out of a published dataset, for good",
                       description="Record a takedown: the next refresh leaves the samples it covers out (new "
                                   "shards replace only the shards that held them) and they never return, nor "
                                   "their exact or near copies. FILEs hold one value per line.")
    p.add_argument("dataset", metavar="DIR")
    p.add_argument("--ids", metavar="FILE", help="sample ids")
    p.add_argument("--sources", metavar="FILE", help="source URIs or URLs (a trailing / covers all under it; a bare "
                                                     "domain covers its URLs: opt-out lists)")
    p.add_argument("--content", metavar="FILE", help="content hashes (content_sha256)")
    p.add_argument("--purge", action="store_true", help="also rewrite the earlier releases' affected shards and "
                                                        "manifests now, and list what changed")
    p.set_defaults(fn=cmd_takedown)

    p = sub.add_parser("stage", help="run one stage on a file", description=(
        "Run one registered stage on a parquet/jsonl/csv file (or, for ingest stages, on their source). "
        "Kept rows and rejects are written as parquet under OUTPUT."))
    p.add_argument("name", help="stage name (see `mmcurate stages`)")
    p.add_argument("--input", required=True, help="input file (parquet, jsonl or csv) or an ingest source")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="stage parameter (repeatable)")
    p.add_argument("--against", action="append", metavar="INDEX",
                   help="for stages that keep an index (every dedup stage): an earlier run's index "
                        "(RUN/index/<stage>) to remove duplicates of")
    p.add_argument("--ray-address", help="join this Ray cluster")
    p.add_argument("--limit", type=int, help="take only the first N rows")
    p.add_argument("--fail-if-empty", action="store_true", help="exit 1 when the run keeps no sample")
    p.set_defaults(fn=cmd_stage)

    p = sub.add_parser("stages", help="list stages and their parameters",
                       description="List every registered stage (or one) with its columns, parameters, defaults "
                                   "and bounds.")
    p.add_argument("name", nargs="?", help="one stage only")
    p.set_defaults(fn=cmd_stages)

    p = sub.add_parser("status", help="each segment of a run: done, failed or pending",
                       description="Each segment of a run's plan: done (with counts and time), failed (with the "
                                   "error) or pending, and whether the run is complete; exit 1 if it is not.")
    p.add_argument("run_dir")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("rejects", help="the rejected rows, with reasons and details",
                       description="Counts of the rejected rows by stage and reason, and the first of them.")
    p.add_argument("run_dir")
    p.add_argument("--stage", help="only this stage's rejects")
    p.add_argument("--reason", help="only this reason")
    p.add_argument("--show", type=int, default=20, help="rows to show (default 20)")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(fn=cmd_rejects)

    p = sub.add_parser("plan", help="a job's segments, what they need, and what would rerun and why",
                       description="The segments of a job and the CPUs/GPUs each holds at once; with a run "
                                   "directory (--output, or the job's own output when it exists), which segments "
                                   "a run would skip or redo, and which fingerprint part changed. Lists the inputs; "
                                   "starts no Ray.")
    p.add_argument("job")
    p.add_argument("--output", help="run directory to compare with")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("audit", help="prove that every input is in the output or the rejects",
                       description="Print a JSON summary; exit 1 if a sample is missing or appears twice.")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_audit)

    for name, ep in sorted(_commands().items()):
        doc = (sys.modules[ep.load().__module__].__doc__ or ep.value).strip().splitlines()[0].rstrip(".")
        sub.add_parser(name, help=f"{doc} (`mmcurate {name} -h`)", add_help=False)

    p = sub.add_parser("report", help="write RUN_DIR/report/index.html and report.json (for a published "
                                      "dataset DIR: its releases page)",
                       description="The funnel, metric histograms, sections the stages add and previews of "
                                   "kept and rejected samples, as one self-contained HTML page and a JSON file.")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)
    return parser


def _commands() -> dict[str, Any]:
    """Commands other packages register (the entry-point group mmcurate.commands)."""
    import importlib.metadata

    return {ep.name: ep for ep in importlib.metadata.entry_points(group="mmcurate.commands")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _commands()
    if argv[:1] and argv[0] in commands:  # a registered command parses its own options
        return commands[argv[0]].load()(argv[1:])
    if argv[:1] == ["stage"] and len(argv) >= 3 and argv[1] in registry() and ({"-h", "--help"} & set(argv)):
        describe_stage(argv[1], registry()[argv[1]])  # `mmcurate stage X --help`: X's own parameters
        print(f"usage: mmcurate stage {argv[1]} --input INPUT --output OUTPUT [--set KEY=VALUE ...]")
        return 0
    from .lock import RunLocked
    from .rundir import SegmentMismatch
    from .runner import NotEnoughResources
    from .stage import StageSetupFailed
    from .watchdog import SegmentStalled

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (JobError, OSError, ValueError, RunLocked, NotEnoughResources, SegmentStalled,
            SegmentMismatch, StageSetupFailed) as e:  # SourceError is a ValueError
        if os.environ.get("MMCURATE_DEBUG"):
            raise
        print(f"mmcurate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
