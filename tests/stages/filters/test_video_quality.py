"""filter_video_quality: each bound rejects with its own reason; None switches a test off."""
from __future__ import annotations

import pyarrow as pa

from stages.filters.video_quality import FilterVideoQuality

GOOD = {"duration": 5.0, "width": 320, "height": 240, "luma_std": 40.0, "motion_score": 0.03}


def _reasons(rows, **params):
    out = FilterVideoQuality(params).process(pa.Table.from_pylist(rows))
    if "reject" not in out.column_names:
        return [None] * len(rows)
    return [r and r["reason"] for r in out.column("reject").to_pylist()]


def test_each_bound_has_its_reason():
    cases = [({}, None), ({"duration": 1.0}, "too_short"), ({"duration": 4000.0}, "too_long"),
             ({"width": 128, "height": 96}, "low_resolution"), ({"width": 1200, "height": 240}, "odd_aspect_ratio"),
             ({"width": 240, "height": 426}, None),  # portrait 9:16
             ({"luma_std": 0.5}, "blank_clip"), ({"motion_score": 0.0}, "near_static"),
             ({"motion_score": 0.9}, "flicker"), ({"motion_score": None}, None)]
    assert _reasons([{**GOOD, **change} for change, _ in cases]) == [reason for _, reason in cases]


def test_a_bound_set_to_none_is_off():
    rows = [{**GOOD, "motion_score": 0.0}, {**GOOD, "duration": 0.5}]
    assert _reasons(rows, min_motion=None, min_duration=None) == [None, None]
    assert FilterVideoQuality({"min_motion": None, "max_motion": None}).reads() == \
        ["duration", "height", "luma_std", "width"]
