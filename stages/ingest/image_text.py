"""Stage `ingest_image_text`: image-text pairs from a manifest, a folder or WebDataset tars.

Listing assigns each pair its identity before any I/O; process() reads the
image, decodes it (EXIF orientation, RGB), resizes and re-encodes it, and
normalises the caption. Every failure is a reject with its own reason code.
"""
from __future__ import annotations

import hashlib
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Resources
from schemas.image_text import IMAGE_TEXT

from .caption import normalize_caption
from .image import decode_resize_encode, preview
from .listed import IngestParams, ListedIngest


class IngestImageTextParams(IngestParams):
    text_column: str = Field("caption", description="manifest column with the caption (written as `caption`)")
    resize: Literal["fit", "center_crop", "pad", "none"] = Field(
        "fit", description="fit = shrink into image_size (keeps aspect); center_crop/pad = exactly image_size square")
    image_size: int = Field(512, ge=16, le=16384, description="target side in pixels for `resize`")
    encode_format: Literal["jpg", "webp"] = Field("jpg", description="re-encode format of the stored image")
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality of the re-encode")
    max_pixels: int = Field(89_478_485, ge=1, description="decompression-bomb cap on width*height (PIL's default)")


class IngestImageText(ListedIngest):
    """Image-text pairs from a manifest, a URL list, a folder with sidecar captions or WebDataset tars."""

    name = "ingest_image_text"
    Params = IngestImageTextParams
    reserved = frozenset(IMAGE_TEXT.names)
    reason_hints = {**ListedIngest.reason_hints, "decompression_bomb": "max_pixels bounds width x height"}
    resources = Resources(num_cpus=1, batch_size=64)

    def adds(self) -> list[Column]:
        px = "px"
        return [Column("image", "media", format="@image_format", preview=preview), Column("image_format"),
                Column("caption", "text", format="txt"), Column("content_sha256"),
                Column("width", "metric", label=f"stored width ({px})"),
                Column("height", "metric", label=f"stored height ({px})"), Column("image_bytes"),
                Column("original_width", "metric", label=f"original width ({px})"),
                Column("original_height", "metric", label=f"original height ({px})"),
                Column("original_bytes"), Column("original_format")]

    # -- loading (workers) -------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        values, rejects = self.each_row(batch, self._load)
        for f in IMAGE_TEXT:
            if f.name not in batch.column_names or f.name in ("caption", "content_sha256"):
                batch = ledger.set_column(batch, f.name, pa.array([v.get(f.name) for v in values], type=f.type))
        return ledger.with_rejects(batch, rejects)

    def _load(self, row: dict[str, Any], fetched: bytes | None) -> dict[str, Any]:
        p = self.params
        caption = normalize_caption(self.text(row), p.invalid_utf8)
        data = fetched if fetched is not None else self.read(row)
        img = decode_resize_encode(data, policy=p.resize, size=p.image_size, fmt=p.encode_format,
                                   quality=p.quality, max_pixels=p.max_pixels)
        return {
            "caption": caption,
            "content_sha256": hashlib.sha256(data).hexdigest(),
            "image": img.data,
            "image_format": img.format,
            "width": img.width,
            "height": img.height,
            "image_bytes": len(img.data),
            "original_width": img.original_width,
            "original_height": img.original_height,
            "original_bytes": len(data),
            "original_format": img.original_format,
        }
