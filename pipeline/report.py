"""`mmcurate report RUN_DIR`: what a run kept, what it removed and why, in one page.

Writes RUN_DIR/report/report.json and RUN_DIR/report/index.html, a self-contained
page (inline CSS and SVG, thumbnails as data: URIs; no scripts, no network):
the funnel (samples into each segment, kept, rejects by stage and reason),
histograms of the metrics that the kept samples carry (CLIP score, image sizes,
caption lengths, image quality), the representation table that
audit_representation wrote, and thumbnail grids of kept samples and of the
rejects of each reason. It reads only the run directory.
"""
from __future__ import annotations

import base64
import html
import io
import json
from typing import Any

import numpy as np
import pyarrow as pa

from . import fs
from .rundir import RunDir

# Metrics shown as histograms when the kept samples have them: column -> label.
METRICS = {"clip_score": "CLIP score", "caption_length": "caption length (characters)",
           "original_width": "original width (px)", "original_height": "original height (px)",
           "width": "stored width (px)", "height": "stored height (px)",
           "image_entropy": "image entropy (bits)", "image_sharpness": "image sharpness (Laplacian variance)",
           "cl_outlier_score": "cleanlab outlier score"}
THUMBS_KEPT, THUMBS_PER_REASON, THUMB_PX = 24, 8, 96


def _last_data_segment(rd: RunDir) -> str | None:
    """The last segment that wrote rows (a sink such as the shard writer writes none)."""
    for d in reversed(rd.segment_dirs()[1:]):
        if any(i.path.endswith(".parquet") for i in fs.list_files(d)):
            return d
    return None


def _first_part(segment_dir: str) -> pa.Table | None:
    parts = sorted(i.path for i in fs.list_files(segment_dir) if i.path.endswith(".parquet"))
    return fs.read_parquet(fs.join(segment_dir, parts[0].rsplit("/", 1)[1])) if parts else None


def _thumb(data: bytes | None) -> str | None:
    if not data:
        return None
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (THUMB_PX, THUMB_PX))
        im = im.convert("RGB")
        im.thumbnail((THUMB_PX, THUMB_PX))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
    except Exception:  # noqa: BLE001 - a thumbnail that does not decode is left out
        return None


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
    report: dict[str, Any] = {"job": summary.get("job"), "inputs": summary.get("inputs"), "kept": summary.get("kept"),
                              "rejected": summary.get("rejected"), "funnel": [], "metrics": {},
                              "representation": {}, "random_features": [], "thumbnails": {"kept": [], "rejected": {}}}
    for seg in summary.get("segments", []):
        report["funnel"].append({"segment": seg["segment"], "in": seg["in"], "kept": seg["kept"],
                                 "rejected": seg.get("rejected", {})})
    last = _last_data_segment(rd)
    first_part = _first_part(last) if last else None
    kept = None
    if first_part is not None:  # only the columns the page shows: not media, not embeddings
        names = first_part.column_names
        kept = fs.read_parquet_dir(last, [c for c in (*METRICS, "meta", "caption", "sample_id") if c in names])
    if kept is not None and kept.num_rows:
        if "caption" in kept.column_names:
            kept = kept.append_column("caption_length", pa.array([len(c or "") for c in
                                                                  kept.column("caption").to_pylist()], pa.int64()))
        for column, label in METRICS.items():
            if column in kept.column_names:
                values = np.asarray(kept.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)
                report["metrics"][column] = {"label": label, **_histogram(values)}
        if "meta" in kept.column_names:
            random = set()
            for m in kept.column("meta").to_pylist()[:1000]:
                for col, info in (json.loads(m) if m else {}).get("features", {}).items():
                    if info.get("random_weights"):
                        random.add(f"{col} ({info.get('model')})")
            report["random_features"] = sorted(random)
        image = next((c for c in ("image", "jpg", "webp") if c in first_part.column_names), None)
        if image:  # thumbnails from the first part only
            for row in first_part.select([c for c in ("sample_id", "caption", image) if c in first_part.column_names]) \
                    .slice(0, THUMBS_KEPT).to_pylist():
                report["thumbnails"]["kept"].append({"sample_id": row["sample_id"], "caption": row.get("caption"),
                                                     "src": _thumb(row[image])})
    for d in rd.reject_dirs():
        sample = _first_part(d)
        if sample is None:
            continue
        wanted = ["sample_id", "reject_stage", "reject_reason", "reject_detail", "caption", "image_thumbnail"]
        rejects = fs.read_parquet_dir(d, [c for c in wanted if c in sample.column_names])
        thumbs = "image_thumbnail" if "image_thumbnail" in rejects.column_names else None
        cols = ["sample_id", "reject_stage", "reject_reason", "reject_detail"] + \
            [c for c in ("caption", thumbs) if c and c in rejects.column_names]
        for row in rejects.select(cols).to_pylist():
            key = f"{row['reject_stage']}: {row['reject_reason']}"
            shown = report["thumbnails"]["rejected"].setdefault(key, [])
            if len(shown) < THUMBS_PER_REASON:
                shown.append({"sample_id": row["sample_id"], "caption": row.get("caption"),
                              "detail": row["reject_detail"], "src": _thumb(row.get(thumbs)) if thumbs else None})
    rep_dir = fs.join(rd.root, "representation")
    if fs.exists(rep_dir):
        for info in fs.list_files(rep_dir):
            if info.path.endswith(".json"):
                name = info.path.rsplit("/", 1)[1][:-5]
                report["representation"][name] = json.loads(fs.read_bytes(fs.join(rep_dir, name + ".json")))
    return report


# -- HTML -----------------------------------------------------------------------------------
CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;max-width:1200px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #dde;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #dde;padding:4px 8px;text-align:left}
th{background:#f3f4f8}td.n{text-align:right;font-variant-numeric:tabular-nums}
.warn{background:#fff4d6;border:1px solid #f0c36d;padding:8px 12px;margin:12px 0}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:112px;font-size:11px;color:#555}
.card img{width:96px;height:96px;object-fit:cover;display:block;background:#eee}
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
        text = it.get("detail") if detail else it.get("caption")
        out.append(f'<div class="card">{img}<div>{e(str(text or ""))[:120]}</div></div>')
    return '<div class="grid">' + "".join(out) + "</div>"


def render(report: dict[str, Any]) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmcurate report: {e(str(report['job']))}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Curation report: {e(str(report['job']))}</h1>",
             f"<p><b id='inputs'>{report['inputs']}</b> inputs, <b id='kept'>{report['kept']}</b> kept, "
             f"<b id='rejected'>{report['rejected']}</b> rejected.</p>"]
    if report["random_features"]:
        parts.append("<div class='warn'>These features come from models with <b>random weights</b>: "
                     + e(", ".join(report["random_features"])) + ". Scores computed from them (such as the CLIP "
                     "score and any filter on it) are random and say nothing about the data.</div>")
    parts.append("<h2>Funnel</h2><table id='funnel'><tr><th>segment</th><th>in</th><th>kept</th>"
                 "<th>rejected (stage: reason = count)</th></tr>")
    for row in report["funnel"]:
        why = "; ".join(f"{s}: " + ", ".join(f"{r} = {n}" for r, n in reasons.items())
                        for s, reasons in row["rejected"].items())
        parts.append(f"<tr><td>{e(row['segment'])}</td><td class='n'>{row['in']}</td><td class='n'>{row['kept']}"
                     f"</td><td>{e(why) or '-'}</td></tr>")
    parts.append("</table>")
    if report["metrics"]:
        parts.append("<h2>Kept samples: metrics</h2><div class='hists'>")
        for column, h in report["metrics"].items():
            if h.get("count"):
                parts.append(f"<div class='hist'><b>{e(h['label'])}</b> (n={h['count']}, mean {h['mean']:.4g})"
                             f"<br>{_svg(h)}</div>")
        parts.append("</div>")
    for segment, rep in report["representation"].items():
        parts.append(f"<h2>Representation ({e(segment)}, {rep.get('captions')} captions)</h2><table>"
                     "<tr><th>category</th><th>counts per group</th><th>imbalance (largest / smallest)</th></tr>")
        for category, info in rep.get("categories", {}).items():
            counts = ", ".join(f"{g} {n}" for g, n in info["counts"].items())
            ratio = info["imbalance_ratio"]
            ratio = "n/a" if ratio is None else ratio if isinstance(ratio, str) else f"{ratio:.2f}"
            parts.append(f"<tr><td>{e(category)}</td><td>{e(counts)}</td><td class='n'>{e(str(ratio))}</td></tr>")
        parts.append("</table>")
    if report["thumbnails"]["kept"]:
        parts.append(f"<h2>Kept (first {len(report['thumbnails']['kept'])})</h2>"
                     + _cards(report["thumbnails"]["kept"]))
    for reason, items in sorted(report["thumbnails"]["rejected"].items()):
        parts.append(f"<h2>Rejected: {e(reason)}</h2>" + _cards(items, detail=True))
    parts.append("</body></html>")
    return "\n".join(parts)


def write(run_dir: str) -> str:
    report = build(run_dir)
    out = fs.join(RunDir(run_dir).root, "report")
    fs.makedirs(out)
    slim = {**report, "thumbnails": {"kept": len(report["thumbnails"]["kept"]),
                                     "rejected": {k: len(v) for k, v in report["thumbnails"]["rejected"].items()}}}
    fs.write_bytes(fs.join(out, "report.json"), json.dumps(slim, indent=1, default=str).encode())
    fs.write_bytes(fs.join(out, "index.html"), render(report).encode())
    return fs.join(out, "index.html")
