"""Stage `filter_video_quality`: clips too short or long, too small, of an odd shape,
blank, near-static or all flicker, judged on the columns ingest_video, clip_video and
measure_video store (nothing is decoded again).

Defaults, and where each comes from (`python bench/bench_video.py --metrics` measures
the generated cases):
- duration 2 s to 1 h: clip_video's own minimum (video2dataset and NeMo Curator cut
  clips of 2-10 s); an hour keeps unclipped sources.
- short side 144 px (the smallest rung of streaming ladders, "144p"); aspect ratio at
  most 2.5 (long side over short: 21:9 cinema is 2.33; banners and strips are more).
- blank: luma_std under 2 (of 255) in every sampled frame is one flat colour.
- motion (mean absolute difference of 64x64 gray frames 0.25 s apart, of 1): a still
  picture reads 0.0000, a slow Ken Burns zoom on a photograph (0.03% a frame) 0.007,
  a faster one (0.15% a frame) 0.03, test patterns and cellular automata 0.03-0.08,
  fresh random noise every frame 0.06 (the 64x64 average smooths it), a black and
  white strobe 1.0. Near-static below 0.001; flicker above 0.25.
Every threshold can be set to None to switch its test off.
"""
from __future__ import annotations

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Resources, RowParams, Stage


class FilterVideoQualityParams(RowParams):
    min_duration: float | None = Field(2.0, ge=0, description="seconds; shorter is too_short")
    max_duration: float | None = Field(3600.0, gt=0, description="seconds; longer is too_long")
    min_short_side: int | None = Field(144, ge=1, description="pixels of the shorter side (as displayed) below "
                                                              "which a clip is low_resolution")
    max_aspect_ratio: float | None = Field(2.5, ge=1, description="long side over short side above which a clip is "
                                                                  "odd_aspect_ratio")
    min_luma_std: float | None = Field(2.0, ge=0, description="a clip whose every sampled frame has less luma "
                                                              "contrast (std, of 255) is blank_clip")
    min_motion: float | None = Field(0.001, ge=0, description="motion_score below which a clip is near_static")
    max_motion: float | None = Field(0.25, gt=0, description="motion_score above which a clip is flicker")


class FilterVideoQuality(Stage):
    """Rejects clips outside the duration, resolution, aspect ratio, blank and motion bounds."""

    name = "filter_video_quality"
    Params = FilterVideoQualityParams
    resources = Resources(num_cpus=0.5, batch_size=1024)
    reason_hints = {"too_short": "min_duration", "too_long": "max_duration", "low_resolution": "min_short_side",
                    "odd_aspect_ratio": "max_aspect_ratio", "blank_clip": "min_luma_std",
                    "near_static": "min_motion", "flicker": "max_motion"}

    def reads(self) -> list[str]:
        p = self.params
        need = {"duration": (p.min_duration, p.max_duration), "width": (p.min_short_side, p.max_aspect_ratio),
                "height": (p.min_short_side, p.max_aspect_ratio), "luma_std": (p.min_luma_std,),
                "motion_score": (p.min_motion, p.max_motion)}
        return sorted(c for c, params in need.items() if any(v is not None for v in params))

    def process(self, batch: pa.Table) -> pa.Table:
        columns = {c: batch.column(c).to_pylist() for c in self.reads()}
        rejects = [self.judge({c: values[i] for c, values in columns.items()}) for i in range(batch.num_rows)]
        return ledger.with_rejects(batch, rejects) if any(rejects) else batch

    def judge(self, v: dict) -> dict | None:
        p = self.params
        d, w, h = v.get("duration"), v.get("width"), v.get("height")
        if d is not None and p.min_duration is not None and d < p.min_duration:
            return ledger.reject("too_short", f"{d:.2f} s < min_duration={p.min_duration:g}")
        if d is not None and p.max_duration is not None and d > p.max_duration:
            return ledger.reject("too_long", f"{d:.1f} s > max_duration={p.max_duration:g}")
        if w and h:
            if p.min_short_side is not None and min(w, h) < p.min_short_side:
                return ledger.reject("low_resolution", f"{w}x{h}: short side < min_short_side={p.min_short_side}")
            if p.max_aspect_ratio is not None and max(w, h) / min(w, h) > p.max_aspect_ratio:
                return ledger.reject("odd_aspect_ratio", f"{w}x{h}: {max(w, h) / min(w, h):.2f} > "
                                                         f"max_aspect_ratio={p.max_aspect_ratio:g}")
        std, motion = v.get("luma_std"), v.get("motion_score")
        if std is not None and p.min_luma_std is not None and std < p.min_luma_std:
            return ledger.reject("blank_clip", f"every sampled frame is one flat colour (luma std {std:.2f} < "
                                               f"min_luma_std={p.min_luma_std:g})")
        if motion is not None and p.min_motion is not None and motion < p.min_motion:
            return ledger.reject("near_static", f"motion {motion:.4f} < min_motion={p.min_motion:g}")
        if motion is not None and p.max_motion is not None and motion > p.max_motion:
            return ledger.reject("flicker", f"motion {motion:.3f} > max_motion={p.max_motion:g}")
        return None
