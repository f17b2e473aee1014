"""`mmcurate report RUN_DIR`: what a run kept, what it removed and why, in one page.

Writes RUN_DIR/report/report.json and RUN_DIR/report/index.html, a self-contained
page (inline CSS and SVG, previews as data: URIs; no scripts, no network): the
funnel (samples into each segment, kept, rejected by stage and reason, expanded),
histograms of the metric columns the job's stages declare, preview grids of kept
samples and of the rejects of each reason (made by the preview function a stage
declares for its media column), and the sections stages add. It reads only the run
directory, and knows no modality: all of that comes from the stages' declarations.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import fs, media
from .rundir import RunDir
from .stage import Column, Stage

PREVIEWS_KEPT, PREVIEWS_PER_REASON = 24, 8
PAIRS_PER_STAGE = 6  # removed duplicates shown beside their survivors, per dedup stage


def _last_data_segment(rd: RunDir) -> str | None:
    """The last segment that wrote rows (a sink such as the shard writer writes none)."""
    for d in reversed(rd.segment_dirs()[1:]):
        if any(i.path.endswith(".parquet") for i in fs.list_files(d)):
            return d
    return None


def first_kept(run_root: str, columns: list[str], n: int) -> list[dict[str, Any]]:
    """The first n rows the run kept, with those of `columns` they have: a report section's
    previews, read part by part so that big text columns of a big run stay on disk."""
    import pyarrow.parquet as pq

    last = _last_data_segment(RunDir(run_root))
    rows: list[dict[str, Any]] = []
    if last is None:
        return rows
    filesystem, _ = fs.resolve(last)
    for part in sorted(i.path for i in fs.list_files(last) if i.path.endswith(".parquet")):
        names = set(pq.read_schema(part, filesystem=filesystem).names)
        table = pq.read_table(part, filesystem=filesystem, columns=[c for c in columns if c in names])
        rows += table.slice(0, n - len(rows)).to_pylist()
        if len(rows) >= n:
            break
    return rows


def _job_stages(rd: RunDir) -> tuple[list[Stage], str | None]:
    """The run's stages, rebuilt from its job.yaml (their declarations drive the page)."""
    from .job import load_yaml, parse_job

    try:
        data = load_yaml(fs.read_bytes(fs.join(rd.root, "job.yaml")).decode(), "job.yaml")
        data.pop("limit", None)
        return parse_job(data, "job.yaml").stages, None
    except Exception as e:  # noqa: BLE001 - the page is still worth having without them
        return [], f"the job's stages could not be rebuilt ({type(e).__name__}: {str(e)[:200]}): no metrics or previews"


def _preview(column: Column | None, ref: dict | None) -> dict[str, str | None]:
    """A card's picture and, for media that plays, its excerpt: as data: URIs."""
    out: dict[str, str | None] = {"src": None, "play": None}
    if column is None or ref is None or (column.preview is None and column.excerpt is None):
        return out
    try:
        data = media.read(ref)
        picture = column.preview(data) if column.preview else None
        clip = column.excerpt(data) if column.excerpt else None
    except Exception:  # noqa: BLE001 - a preview that cannot be made is left out
        return out
    if picture:
        kind = "image/png" if picture[:8] == b"\x89PNG\r\n\x1a\n" else "image/jpeg"
        out["src"] = f"data:{kind};base64," + base64.b64encode(picture).decode()
        out["wide"] = _is_strip(picture)
    if clip:
        out["play"] = f"data:{clip[0]};base64," + base64.b64encode(clip[1]).decode()
    return out


def _is_strip(picture: bytes) -> bool:
    """A picture more than three times as wide as high (a keyframe strip): shown whole."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(picture)) as im:
            return im.width > 3 * im.height
    except Exception:  # noqa: BLE001 - then it is shown as any picture
        return False


def _shown(columns: list[Column], row: dict[str, Any]) -> tuple[Column | None, dict | None]:
    """The last of the previewable media columns that this row has a value in."""
    for c in reversed(columns):
        if row.get(c.name) is not None:
            return c, row[c.name]
    return None, None


def _histogram(values: np.ndarray, bins: int = 20) -> dict[str, Any]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"count": 0}
    counts, edges = np.histogram(values, bins=bins)
    return {"count": int(values.size), "min": float(values.min()), "max": float(values.max()),
            "mean": float(values.mean()), "counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}


def build(run_dir: str) -> dict[str, Any]:
    rd = RunDir(run_dir)
    summary_path = fs.join(rd.root, "summary.json")
    if not fs.exists(summary_path):
        raise FileNotFoundError(f"{run_dir}: no summary.json: not a finished run directory")
    summary = json.loads(fs.read_bytes(summary_path))
    stages, note = _job_stages(rd)
    declared = {c.name: c for s in stages for c in s.adds()}
    metrics = {n: c for n, c in declared.items() if c.kind == "metric"}
    # what a card shows: of the media a stage can preview, the last declared that the row has (a
    # clip's keyframe strip rather than its source video's poster; a reject before it, the poster)
    shown_all = [c for c in declared.values() if c.kind == "media" and (c.preview or c.excerpt)]
    text = next((n for n, c in declared.items() if c.kind == "text"), None)
    report: dict[str, Any] = {"job": summary.get("job"), "inputs": summary.get("inputs"), "kept": summary.get("kept"),
                              "rejected": summary.get("rejected"), "funnel": [], "metrics": {}, "sections": [],
                              "notes": [note] if note else [], "previews": {"kept": [], "rejected": {}},
                              "pairs": {}}
    for seg in summary.get("segments", []):
        report["funnel"].append({"segment": seg["segment"], "in": seg["in"], "kept": seg["kept"],
                                 "rejected": seg.get("rejected", {}), "expanded": seg.get("expanded", 0)})
    last = _last_data_segment(rd)
    wanted = [*metrics, "meta", "sample_id", *([text] if text else []), *(c.name for c in shown_all),
              *(c for s in stages for c in s.report_columns())]
    wanted = list(dict.fromkeys(wanted))
    kept = fs.read_parquet_dir(last, wanted) if last else None  # only what the page shows: no embeddings
    if kept is not None and kept.num_rows:
        for column, c in metrics.items():
            if column in kept.column_names:
                values = np.asarray(kept.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
                report["metrics"][column] = {"label": c.label or column, **_histogram(values)}
        for row in kept.slice(0, PREVIEWS_KEPT).to_pylist():
            report["previews"]["kept"].append({"sample_id": row["sample_id"], "text": row.get(text),
                                               **_preview(*_shown(shown_all, row))})
    for stage in stages:  # two model stages warn of the same random weights once
        report["sections"] += [x for x in stage.report_sections(rd.root, kept) if x not in report["sections"]]
    cols = ["sample_id", "reject_stage", "reject_reason", "reject_detail", *([text] if text else []),
            *(c.name for c in shown_all)]
    for d in rd.reject_dirs():
        rejects = fs.read_parquet_dir(d, cols + ["duplicate_of"])
        for row in (rejects.to_pylist() if rejects is not None else []):
            key = f"{row['reject_stage']}: {row['reject_reason']}"
            items = report["previews"]["rejected"].setdefault(key, [])
            if len(items) < PREVIEWS_PER_REASON:
                items.append({"sample_id": row["sample_id"], "text": row.get(text), "detail": row["reject_detail"],
                              **_preview(*_shown(shown_all, row))})
        if rejects is not None and "duplicate_of" in rejects.column_names:
            pairs = _pairs(rejects, fs.join(rd.stages, d.rstrip("/").rsplit("/", 1)[1]), cols, text, shown_all)
            if pairs:
                report["pairs"][pairs[0][0]["stage"]] = pairs
    return report


def _pairs(rejects, kept_dir: str, columns: list[str], text: str | None, shown: list[Column]) -> list:
    """A few removed duplicates and their survivors, as the dedup stage's own output has them
    (a survivor from an earlier run's index is named, not shown)."""
    removed = rejects.filter(pc.is_valid(rejects.column("duplicate_of"))).slice(0, PAIRS_PER_STAGE).to_pylist()
    if not removed:
        return []
    wanted = {r["duplicate_of"] for r in removed}
    kept = fs.read_parquet_dir(kept_dir, [c for c in columns if not c.startswith("reject_")])
    found = {} if kept is None else {r["sample_id"]: r for r in kept.filter(
        pc.is_in(kept.column("sample_id"), pa.array(sorted(wanted), pa.string()))).to_pylist()}
    out = []
    for r in removed:
        survivor = found.get(r["duplicate_of"])
        out.append(({"stage": r["reject_stage"], "sample_id": r["sample_id"], "detail": r["reject_detail"],
                     "text": r.get(text), **_preview(*_shown(shown, r))},
                    {"sample_id": r["duplicate_of"], "text": (survivor or {}).get(text),
                     "detail": "kept" if survivor else f"kept earlier: {r['duplicate_of']}",
                     **(_preview(*_shown(shown, survivor)) if survivor else {})}))
    return out


# -- HTML -----------------------------------------------------------------------------------
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #dde;padding:4px 8px;text-align:left}
th{background:#f3f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4d6;border:1px solid #f0c36d;padding:8px 12px;margin:12px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:112px;font-size:11px;color:#555}
.card img{width:96px;height:96px;object-fit:cover;display:block;background:#eee}
.card.strip{width:100%}.card.strip img{width:auto;max-width:100%;height:72px;object-fit:contain}
.card.plays{width:208px}.card.plays img{width:192px;height:64px;object-fit:contain}.card audio{width:200px;height:32px}
.hists{display:flex;flex-wrap:wrap;gap:16px}.hist{font-size:12px}"""


def _svg(h: dict[str, Any], width: int = 320, height: int = 120) -> str:
    counts = h["counts"]
    top = max(counts) or 1
    bar = width / len(counts)
    rects = "".join(f'<rect x="{i * bar:.1f}" y="{height - c / top * height:.1f}" width="{bar - 1:.1f}" '
                    f'height="{c / top * height:.1f}" fill="#4a6fd1"><title>{c}</title></rect>'
                    for i, c in enumerate(counts))
    return (f'<svg width="{width}" height="{height + 16}" role="img"><g>{rects}</g>'
            f'<text x="0" y="{height + 13}" font-size="10">{h["min"]:.4g}</text>'
            f'<text x="{width}" y="{height + 13}" font-size="10" text-anchor="end">{h["max"]:.4g}</text></svg>')


def _cards(items: list[dict[str, Any]], detail: bool = False) -> str:
    e = html.escape
    out = []
    for it in items:
        img = f'<img src="{it["src"]}" alt="">' if it.get("src") else '<div style="width:96px;height:96px;' \
                                                                      'background:#eee"></div>'
        play = f'<audio controls preload="none" src="{it["play"]}"></audio>' if it.get("play") else ""
        text = it.get("detail") if detail else it.get("text")
        kind = " strip" if it.get("wide") else " plays" if play else ""
        out.append(f'<div class="card{kind}">{img}{play}<div>{e(str(text or ""))[:120]}</div></div>')
    return '<div class="grid">' + "".join(out) + "</div>"


def render(report: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmcurate report: {e(str(report['job']))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Curation report: {e(str(report['job']))}</h1>",
             f"<p><b id='inputs'>{report['inputs']}</b> inputs, <b id='kept'>{report['kept']}</b> kept, "
             f"<b id='rejected'>{report['rejected']}</b> rejected.</p>"]
    for note in report["notes"]:
        parts.append(f"<div class='warn'>{e(note)}</div>")
    for section in report["sections"]:
        if section.get("warn"):
            parts.append(section["html"])
    parts.append("<h2>Funnel</h2><table id='funnel'><tr><th>segment</th><th>in</th><th>kept</th>"
                 "<th>expanded</th><th>rejected (stage: reason = count)</th></tr>")
    for row in report["funnel"]:
        why = "; ".join(f"{s}: " + ", ".join(f"{r} = {n}" for r, n in reasons.items())
                        for s, reasons in row["rejected"].items())
        parts.append(f"<tr><td>{e(row['segment'])}</td><td class='n'>{row['in']}</td><td class='n'>{row['kept']}"
                     f"</td><td class='n'>{row.get('expanded') or '-'}</td><td>{e(why) or '-'}</td></tr>")
    parts.append("</table>")
    if report["metrics"]:
        parts.append("<h2>Kept samples: metrics</h2><div class='hists'>")
        for column, h in report["metrics"].items():
            if h.get("count"):
                parts.append(f"<div class='hist'><b>{e(h['label'])}</b> (n={h['count']}, mean {h['mean']:.4g})"
                             f"<br>{_svg(h)}</div>")
        parts.append("</div>")
    for section in report["sections"]:
        if not section.get("warn"):
            parts.append(f"<h2>{e(section['title'])}</h2>{section['html']}")
    if report["previews"]["kept"]:
        parts.append(f"<h2>Kept (first {len(report['previews']['kept'])})</h2>" + _cards(report["previews"]["kept"]))
    for stage, pairs in report["pairs"].items():
        parts.append(f"<h2>Duplicates beside their survivors: {e(stage)}</h2><table class='pairs'>"
                     "<tr><th>removed</th><th>survivor</th></tr>")
        for removed, survivor in pairs:
            parts.append(f"<tr><td>{_cards([removed], detail=True)}</td><td>{_cards([survivor], detail=True)}</td></tr>")
        parts.append("</table>")
    for reason, items in sorted(report["previews"]["rejected"].items()):
        parts.append(f"<h2>Rejected: {e(reason)}</h2>" + _cards(items, detail=True))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(run_dir: str) -> str:
    report = build(run_dir)
    out = fs.join(RunDir(run_dir).root, "report")
    fs.makedirs(out)
    slim = {**report, "sections": [{k: v for k, v in sec.items() if k != "html"} for sec in report["sections"]],
            "pairs": {k: [[a["sample_id"], b["sample_id"]] for a, b in v] for k, v in report["pairs"].items()},
            "previews": {"kept": len(report["previews"]["kept"]),
                         "rejected": {k: len(v) for k, v in report["previews"]["rejected"].items()}}}
    fs.write_bytes(fs.join(out, "report.json"), json.dumps(slim, indent=1, default=str).encode())
    fs.write_bytes(fs.join(out, "index.html"), render(report).encode())
    return fs.join(out, "index.html")


# -- a published dataset's releases -------------------------------------------------------
def build_releases(dataset: str) -> dict[str, Any]:
    """Every release of a dataset: its size, what it added and removed and why."""
    from .release import _release_dirs, latest

    rows = []
    for info in sorted(_release_dirs(dataset), key=lambda i: i.path):
        name = info.path.rstrip("/").rsplit("/", 1)[-1]
        if not fs.exists(fs.join(dataset, "releases", name, "manifest.json")):
            continue  # not published
        rel = json.loads(fs.read_bytes(fs.join(dataset, "releases", name, "release.json")))
        diff = rel.get("diff", {})
        rows.append({"version": name, "samples": rel.get("samples"), "shards": len(rel.get("shards", [])),
                     "added": diff.get("samples_added"), "removed": diff.get("samples_removed", 0),
                     "superseded": diff.get("samples_superseded", 0), "inputs_new": diff.get("inputs_new"),
                     "inputs_skipped": diff.get("inputs_skipped"), "rejected": diff.get("rejected", {}),
                     "shards_replaced": diff.get("shards_replaced", {}), "mmcurate": rel.get("mmcurate")})
    return {"dataset": dataset, "latest": latest(dataset), "releases": rows}


def render_releases(report: dict[str, Any]) -> str:
    e = html.escape
    rows = report["releases"]
    top = max([r["samples"] or 0 for r in rows] + [1])
    width, height, bar = 480, 140, 480 / max(1, len(rows))
    bars = "".join(f'<rect x="{i * bar:.1f}" y="{height - (r["samples"] or 0) / top * height:.1f}" '
                   f'width="{bar - 2:.1f}" height="{(r["samples"] or 0) / top * height:.1f}" fill="#4a6fd1">'
                   f'<title>{e(r["version"])}: {r["samples"]} samples</title></rect>' for i, r in enumerate(rows))
    chart = f'<svg id="growth" width="{width}" height="{height + 4}" role="img">{bars}</svg>'
    table = ["<table id='releases'><tr><th>release</th><th>samples</th><th>shards</th><th>added</th><th>removed "
             "(takedowns, superseded)</th><th>inputs new / already published</th><th>rejected (segment: reason = "
             "count)</th></tr>"]
    for r in rows:
        why = "; ".join(f"{stage}: " + ", ".join(f"{k} = {v}" for k, v in reasons.items())
                        for stages in r["rejected"].values() for stage, reasons in (stages or {}).items() if reasons)
        table.append(f"<tr><td>{e(r['version'])}</td><td class='n'>{r['samples']}</td><td class='n'>{r['shards']}"
                     f"</td><td class='n'>{r['added']}</td><td class='n'>{r['removed']} ({r['superseded']} "
                     f"superseded)</td><td class='n'>{r['inputs_new']} / {r['inputs_skipped']}</td>"
                     f"<td>{e(why) or '-'}</td></tr>")
    table.append("</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>mmcurate releases: {e(report['dataset'])}"
            f"</title><style>{CSS}</style></head><body><h1>Releases of {e(report['dataset'])}</h1>"
            f"<p>Latest: <b>{e(str(report['latest']))}</b>; {len(rows)} releases. Each release's own run "
            f"(funnel, previews) is reported from its work folder: <code>mmcurate report "
            f"{e(report['dataset'])}/work/vNNNN</code>.</p><h2>Growth</h2>{chart}<h2>Releases</h2>"
            + "".join(table) + "</body></html>")


def write_releases(dataset: str) -> str:
    report = build_releases(dataset)
    out = fs.join(dataset, "report")
    fs.write_bytes(fs.join(out, "releases.json"), json.dumps(report, indent=1, default=str).encode())
    fs.write_bytes(fs.join(out, "index.html"), render_releases(report).encode())
    return fs.join(out, "index.html")
