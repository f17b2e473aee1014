"""Looking into a run and a job: `mmcurate status`, `mmcurate rejects`, `mmcurate plan`.

They read the run directory (and, for plan, list the job's inputs), never change it.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow.compute as pc

from . import fs
from .rundir import RunDir


def status(run_dir: str) -> dict[str, Any]:
    """Each segment of the run's plan: done, failed or pending, with its counts and time."""
    from .lock import current_holder, describe

    rd = RunDir(run_dir)
    try:
        plan = json.loads(fs.read_bytes(fs.join(rd.root, "plan.json")))
    except FileNotFoundError:
        raise FileNotFoundError(f"{run_dir}: no plan.json: is this a run directory?") from None
    rows = []
    for name in plan["segments"]:
        marker = rd.marker(name)
        failed = fs.join(rd.segment_dir(name), "_FAILED")
        if marker is not None:
            rows.append({"segment": name, "state": "done", "in": marker.get("inputs"), "kept": marker.get("kept"),
                         "rejected": marker.get("rejected"), "expanded": marker.get("expanded", 0),
                         "seconds": round(marker.get("seconds", 0.0), 2)})
        elif fs.exists(failed):
            why = json.loads(fs.read_bytes(failed))
            rows.append({"segment": name, "state": "failed", "error": why.get("error")})
        else:
            rows.append({"segment": name, "state": "pending"})
    holder = current_holder(rd.root)
    complete = all(r["state"] == "done" for r in rows) and holder is None
    return {"run_dir": rd.root, "complete": complete, "running": describe(holder) if holder is not None else None,
            "segments": rows}


def format_status(result: dict[str, Any]) -> str:
    lines = [f"{result['run_dir']}: " + ("complete" if result["complete"] else
                                         f"running ({result['running']})" if result["running"] else "not complete")]
    for r in result["segments"]:
        if r["state"] == "done":
            lines.append(f"  done     {r['segment']}: {r['in']} in, {r['kept']} kept, {r['rejected']} rejected"
                         + (f", {r['expanded']} expanded" if r["expanded"] else "") + f" ({r['seconds']}s)")
        elif r["state"] == "failed":
            lines.append(f"  FAILED   {r['segment']}: {r['error']}")
        else:
            lines.append(f"  pending  {r['segment']}")
    return "\n".join(lines)


def rejects(run_dir: str, stage: str | None = None, reason: str | None = None, show: int = 20) -> dict[str, Any]:
    """Counts of the rejected rows by stage and reason, and the first `show` of them."""
    rd = RunDir(run_dir)
    wanted = ["sample_id", "source_uri", "reject_stage", "reject_reason", "reject_detail"]
    counts: Counter = Counter()
    shown: list[dict[str, Any]] = []
    for folder in rd.reject_dirs():
        table = fs.read_parquet_dir(folder, wanted)
        if table is None:
            continue
        if stage:
            table = table.filter(pc.equal(table.column("reject_stage"), stage))
        if reason:
            table = table.filter(pc.equal(table.column("reject_reason"), reason))
        counts.update(zip(table.column("reject_stage").to_pylist(), table.column("reject_reason").to_pylist()))
        if len(shown) < show:
            shown += table.slice(0, show - len(shown)).to_pylist()
    return {"run_dir": rd.root, "total": sum(counts.values()),
            "by_reason": [{"stage": s, "reason": r, "count": n} for (s, r), n in counts.most_common()],
            "rows": shown}


def format_rejects(result: dict[str, Any]) -> str:
    lines = [f"{result['total']} rejected in {result['run_dir']}"]
    lines += [f"  {r['count']:>8}  {r['stage']}: {r['reason']}" for r in result["by_reason"]]
    if result["rows"]:
        lines.append("")
        for r in result["rows"]:
            lines.append(f"{r['sample_id']}  {r['reject_stage']}: {r['reject_reason']}")
            lines.append(f"    {r.get('source_uri') or ''}")
            lines.append(f"    {(r.get('reject_detail') or '')[:300]}")
    return "\n".join(lines)


def plan(job, output: str | None = None) -> dict[str, Any]:
    """The job's segments, what each needs at once, and (with a run directory) whether a
    run would redo it and why: which fingerprint part changed. Lists the inputs (no Ray)."""
    import hashlib

    from . import __version__
    from .job import check_chain
    from .runner import Runner, _hash, _ipc, segment_needs

    runner = Runner(job, output or "/nonexistent-mmcurate-plan", log=lambda *a: None)
    rows = []
    for seg in runner.segments:
        row: dict[str, Any] = {"segment": seg.name, "kind": seg.kind, "stages": [s.name for s in seg.stages]}
        if seg.kind != "listing":
            need = segment_needs(seg)
            row["needs"] = {"cpus": need["cpus"], "gpus": need["gpus"], "what": need["parts"]}
        rows.append(row)
    result: dict[str, Any] = {"job": job.name, "output": output, "segments": rows}
    if not output:
        return result
    rd = runner.run_dir
    listing = runner.segments[0].stages[0]
    digest, schema = hashlib.sha256(), set()
    for table in runner.listed_parts(listing):
        digest.update(_ipc(table))
        schema.update(table.column_names)
    if listing.open_columns:
        runner.columns = check_chain(job.stages, job.source, listed=schema)
    upstream = _hash(__version__, listing.name, digest.hexdigest())
    marker = rd.marker(runner.segments[0].name)
    rows[0]["would"] = "not listed yet" if marker is None else "skip: the inputs are unchanged" \
        if marker.get("fingerprint") == upstream else "redo: the inputs changed"
    for seg, row in zip(runner.segments[1:], rows[1:]):
        fingerprint, why = runner.fingerprint(seg, upstream)
        marker = rd.marker(seg.name)
        if marker is None:
            row["would"] = "run: not run yet"
        elif marker.get("fingerprint") == fingerprint:
            row["would"] = "skip: unchanged"
        else:
            row["would"] = "redo: " + "; ".join(_changed(marker.get("why"), why))
        upstream = fingerprint
    return result


def _changed(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    if not old:
        return ["its marker does not say what it was made from (an older run)"]
    out = []
    if old.get("engine") != new["engine"]:
        out.append("the engine's code changed")
    if old.get("upstream") != new["upstream"]:
        out.append("an earlier segment changed")
    for stage, parts in new["stages"].items():
        before = (old.get("stages") or {}).get(stage)
        name = stage.split(":", 1)[1]
        if before is None:
            out.append(f"{name} is new here")
            continue
        out += [f"{name}: its {part} changed" for part, value in parts.items() if before.get(part) != value]
    if old.get("writes_by") != new.get("writes_by"):
        out.append("the columns the stages declare changed")
    return out or ["the committed files disagree with their marker"]


def format_plan(result: dict[str, Any]) -> str:
    lines = [f"job {result['job']}" + (f" against {result['output']}" if result["output"] else "")]
    for r in result["segments"]:
        need = f"  needs {r['needs']['cpus']:g} CPU" + (f", {r['needs']['gpus']:g} GPU" if r["needs"]["gpus"] else "") \
            + f" ({r['needs']['what']})" if "needs" in r else ""
        would = f"  -> {r['would']}" if "would" in r else ""
        lines.append(f"  {r['segment']}{would}")
        if need:
            lines.append(f"    {need.strip()}")
    return "\n".join(lines)
