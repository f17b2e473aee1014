"""Stage `filter_datacomp_basic`: DataComp's "basic filtering" baseline.

Gadre et al., DataComp (2023), section 3.4: keep a pair when its caption has more
than 2 words and more than 5 characters, the shorter side of the original image is
at least 200 px, and the aspect ratio is at most 3. (DataComp's English-language
condition is `filter_caption_quality`'s job.)
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Resources, RowParams, Stage


class FilterDatacompBasicParams(RowParams):
    min_caption_words: int = Field(3, ge=0, description="at least this many words (DataComp: more than 2)")
    min_caption_chars: int = Field(6, ge=0, description="at least this many characters (DataComp: more than 5)")
    min_side: int = Field(200, ge=0, description="shorter side of the original image, px (DataComp: 200)")
    max_aspect: float = Field(3.0, ge=1, description="longer side / shorter side at most (DataComp: 3)")
    text_column: str = Field("caption", description="caption column")


def _dims(table: pa.Table) -> tuple[list, list]:
    for w, h in (("original_width", "original_height"), ("width", "height")):
        if w in table.column_names and h in table.column_names:
            return table.column(w).to_pylist(), table.column(h).to_pylist()
    raise ValueError("filter_datacomp_basic needs image sizes: original_width/original_height or width/height")


class FilterDatacompBasic(Stage):
    """DataComp's basic filter: caption length, the image's shorter side, its aspect ratio."""

    name = "filter_datacomp_basic"
    Params = FilterDatacompBasicParams
    resources = Resources(num_cpus=1, batch_size=1024)

    reason_hints = {"image_too_small": "min_side", "caption_too_short": "min_caption_words and min_caption_chars",
                    "extreme_aspect_ratio": "max_aspect"}

    def reads(self) -> list[str]:
        return [self.params.text_column, "original_width", "original_height"]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        widths, heights = _dims(batch)
        rejects = []
        for caption, w, h in zip(batch.column(p.text_column).to_pylist(), widths, heights):
            caption = (caption or "").strip()
            words = len(caption.split())
            short, long = min(w or 0, h or 0), max(w or 0, h or 0)
            if words < p.min_caption_words or len(caption) < p.min_caption_chars:
                rejects.append(ledger.reject("caption_too_short", f"{words} words, {len(caption)} characters "
                                             f"(DataComp: >= {p.min_caption_words} and >= {p.min_caption_chars})"))
            elif short < p.min_side:
                rejects.append(ledger.reject("image_too_small", f"shorter side {short} px < {p.min_side}"))
            elif long / max(short, 1) > p.max_aspect:
                rejects.append(ledger.reject("extreme_aspect_ratio", f"{w}x{h}: aspect {long / max(short, 1):.2f} > "
                                             f"{p.max_aspect}"))
            else:
                rejects.append(None)
        return ledger.with_rejects(batch, rejects)
