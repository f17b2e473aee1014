"""Personal data: `redact_pii` for captions, `blur_faces` for images.

redact_pii replaces, in this order (credentials before the e-mail rule can see
`user:pass@host`), with typed placeholders:
  URL credentials  https://user:secret@host -> https://<CREDENTIALS>@host
  e-mail           jane.doe@example.org     -> <EMAIL>
  IP address       192.168.0.1, 2001:db8::1 -> <IP>
  phone number     +1 (555) 123-4567        -> <PHONE>  (7 to 15 digits, E.164's bound)
and counts them per sample (`pii_redacted`, and per type in meta.pii).

blur_faces finds frontal faces with OpenCV's Haar cascade (haarcascade_frontalface_alt2,
shipped in opencv-python's cv2.data: offline) and blurs each box with a Gaussian whose
radius scales with the face, as DataComp blurred faces in its pool. Measured on the
demo's photographs at <= 512 px, one thread: 72 ms an image, where scikit-image's LBP
cascade (used before) took about 0.45 s and was the slowest step of the demo.
The count goes into `faces_blurred`; an image with faces is re-encoded in its format.
"""
from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources, RowParams, Stage
from stages.ingest.image import open_image

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_HEX = r"[0-9a-f]{1,4}"
PATTERNS = [
    ("CREDENTIALS", re.compile(r"(?<=://)[^\s/@:]+:[^\s/@]+(?=@)")),
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    # IPv4, or IPv6 as eight groups or with "::" (so that 10:30:45 or beef:cafe:dead stay)
    ("IP", re.compile(rf"\b{_OCTET}(?:\.{_OCTET}){{3}}\b|(?<![\w:])(?:{_HEX}:){{7}}{_HEX}(?![\w:])"
                      rf"|(?<![\w:])(?:{_HEX}:)*{_HEX}?::(?:{_HEX}:)*{_HEX}?(?![\w:])", re.I)),
    # a run of digits with separators or a leading +; 7 to 15 digits (E.164) checked below
    ("PHONE", re.compile(r"(?<![\w.+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?"
                         r"\d{1,5}(?:[\s.-]\d{1,8}){1,5}(?![\w.])|(?<![\w.+])\+\d{7,15}(?![\w.])")),
]
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def _is_phone(text: str) -> bool:
    digits = sum(c.isdigit() for c in text)
    return 7 <= digits <= 15 and not _DATE.match(text.strip()) and ("+" in text or "(" in text or
                                                                   any(c in text for c in " .-"))


def redact(text: str) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    for kind, pattern in PATTERNS:
        n = 0

        def sub(m: re.Match) -> str:
            nonlocal n
            if kind == "PHONE" and not _is_phone(m.group(0)):
                return m.group(0)
            n += 1
            return f"<{kind}>"

        text = pattern.sub(sub, text)
        if n:
            counts[kind.lower()] = n
    return text, counts


class RedactPiiParams(RowParams):
    text_columns: list[str] = Field(["caption"], description="text columns to redact in place")


class RedactPii(Stage):
    """Replaces e-mail addresses, phone numbers, IP addresses and URL credentials in texts with placeholders."""

    name = "redact_pii"
    Params = RedactPiiParams
    resources = Resources(num_cpus=1, batch_size=1024)

    def reads(self) -> list[str]:
        return list(self.params.text_columns)

    def adds(self) -> list[Column]:
        return [Column("pii_redacted", "metric", label="PII items redacted per sample")]

    def process(self, batch: pa.Table) -> pa.Table:
        totals = [0] * batch.num_rows
        found: list[dict[str, int]] = [{} for _ in range(batch.num_rows)]
        for column in self.params.text_columns:
            out = []
            for i, text in enumerate(batch.column(column).to_pylist()):
                if text:
                    text, counts = redact(text)
                    for k, n in counts.items():
                        found[i][k] = found[i].get(k, 0) + n
                        totals[i] += n
                out.append(text)
            batch = ledger.set_column(batch, column, pa.array(out, pa.string()))
        if "meta" in batch.column_names:
            metas = []
            for m, counts in zip(batch.column("meta").to_pylist(), found):
                meta = json.loads(m) if m else {}
                if counts:
                    meta["pii"] = counts
                metas.append(json.dumps(meta, sort_keys=True) if meta else m)
            batch = ledger.set_column(batch, "meta", pa.array(metas, pa.string()))
        return ledger.set_column(batch, "pii_redacted", pa.array(totals, pa.int32()))


_CASCADE = None


def detect_faces(im: Image.Image, min_size: int = 24, min_neighbors: int = 8) -> list[tuple[int, int, int, int]]:
    """(left, top, width, height) boxes of frontal faces, in the image's own pixels."""
    global _CASCADE
    import cv2

    if _CASCADE is None:
        cv2.setNumThreads(1)  # Ray gives the stage one CPU per task
        _CASCADE = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_alt2.xml"))
        if _CASCADE.empty():
            raise RuntimeError("OpenCV could not load haarcascade_frontalface_alt2.xml from cv2.data")
    scale = min(1.0, 512 / max(im.size))  # detection on <= 512 px, boxes mapped back
    small = im.convert("L").resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                                   Image.Resampling.BILINEAR) if scale < 1 else im.convert("L")
    found = _CASCADE.detectMultiScale(np.asarray(small), scaleFactor=1.2, minNeighbors=min_neighbors,
                                      minSize=(min_size, min_size))
    return [(round(x / scale), round(y / scale), round(w / scale), round(h / scale)) for x, y, w, h in found]


def blur_boxes(im: Image.Image, boxes: list[tuple[int, int, int, int]]) -> Image.Image:
    im = im.copy()
    for left, top, w, h in boxes:
        # a margin of 20% around the detector's box, which is tight on the face
        mx, my = int(w * 0.2), int(h * 0.2)
        box = (max(0, left - mx), max(0, top - my), min(im.width, left + w + mx), min(im.height, top + h + my))
        region = im.crop(box).filter(ImageFilter.GaussianBlur(radius=max(4, w // 6)))
        im.paste(region, box[:2])
    return im


class BlurFacesParams(RowParams):
    image_column: str = Field("image", description="image column (blurred in place)")
    format_column: str = Field("image_format", description="column naming the image format (jpg or webp)")
    min_face: int = Field(24, ge=8, description="smallest face side searched, px at <= 512 px")
    min_neighbors: int = Field(8, ge=1, description="overlapping detections a face needs (fewer finds more "
                                                    "faces and more false ones; on scikit-image's photographs 8 "
                                                    "finds the astronaut's face and nothing in the others)")
    quality: int = Field(90, ge=1, le=100, description="re-encode quality for images with faces")


class BlurFaces(Stage):
    """Finds frontal faces (OpenCV's Haar cascade) and blurs them in the image."""

    name = "blur_faces"
    Params = BlurFacesParams
    resources = Resources(num_cpus=1, batch_size=32)

    def reads(self) -> list[str]:
        return [self.params.image_column]

    def adds(self) -> list[Column]:
        from stages.ingest.image import preview

        return [Column(self.params.image_column, "media", format=f"@{self.params.format_column}", preview=preview),
                Column("faces_blurred", "metric", label="faces blurred per image"), Column("image_bytes")]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        formats = batch.column(p.format_column).to_pylist() if p.format_column in batch.column_names else \
            [None] * batch.num_rows
        images, counts, rejects = [], [], []
        for data, fmt in zip(batch.column(p.image_column).to_pylist(), formats):
            try:
                im = open_image(data, "RGB")
                boxes = detect_faces(im, p.min_face, p.min_neighbors)
            except Exception as e:  # noqa: BLE001 - this row's problem only
                images.append(data)
                counts.append(None)
                rejects.append(ledger.reject("undecodable_image", f"blur_faces: {type(e).__name__}: {e}"))
                continue
            if boxes:
                out = io.BytesIO()
                kind = "WEBP" if (fmt or "").lower() == "webp" else "JPEG"
                blur_boxes(im, boxes).save(out, format=kind, quality=p.quality)
                data = out.getvalue()
            images.append(data)
            counts.append(len(boxes))
            rejects.append(None)
        batch = ledger.set_column(batch, p.image_column, pa.array(images, pa.large_binary()))
        if "image_bytes" in batch.column_names:  # the stored size changes with the re-encode
            batch = ledger.set_column(batch, "image_bytes", pa.array([len(b or b"") for b in images], pa.int64()))
        batch = ledger.set_column(batch, "faces_blurred", pa.array(counts, pa.int32()))
        return ledger.with_rejects(batch, rejects) if any(rejects) else batch
