"""What every dedup stage shares: the keep rule, and the parameters of the index.

The keep rule picks the survivor of a set of duplicates, as one sortable label per
row, `<rank><ordinal>|<sample_id>`: the smallest label survives. Rank is empty for
`first` (lowest ordinal, first in source order), a larger-first encoding of the size
for `largest`, and of a column for `max:<column>`; the sample id breaks ties.
"""
from __future__ import annotations

import math
import struct
from typing import Annotated, Callable, Literal

import pyarrow as pa
from pydantic import AfterValidator, Field, field_validator

from pipeline.stage import Params

EARLIER = "!"  # the rank of an index's samples (from an earlier run): it sorts before every new one


def _keep_rule(v: str) -> str:
    if v not in ("first", "largest") and not (v.startswith("max:") and len(v) > 4):
        raise ValueError("keep must be 'first', 'largest' or 'max:<column>'")
    return v


KeepRule = Annotated[str, AfterValidator(_keep_rule)]  # which copy survives; every dedup stage takes it


class DedupParams(Params):
    keep: KeepRule = Field("first", description="which copy survives: first (lowest ordinal), largest, or "
                                                "max:<column>")
    against: list[str] = Field(default_factory=list, description="indexes of earlier runs (<run>/index/<stage>): "
                                                                  "samples that duplicate them are removed")
    against_reason: Literal["duplicate", "contaminated"] = Field(
        "duplicate", description="reason for those: duplicate (a refresh) or contaminated (an evaluation set)")
    write_index: bool = Field(True, description="write the kept samples' keys to <output>/index/<index_name>/")
    superseded: list[str] = Field(default_factory=list, description="sample ids whose entries in the `against` "
                                                                     "indexes no longer count (a refresh sets them: "
                                                                     "their inputs changed)")
    index_name: str = Field("", pattern=r"^([A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})?$",
                            description="the index's folder (default: the stage's name); two dedup stages of one "
                                        "name in a job (files, then functions) need different ones")

    @field_validator("against", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v


def descending(value: float | None) -> str:
    """A string that sorts larger numbers first (None last): IEEE bits made order-preserving."""
    if value is None or math.isnan(value):
        return "1"
    bits = struct.unpack(">Q", struct.pack(">d", -float(value)))[0]
    bits = bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63
    return f"0{bits:016x}"


def rank_columns(rule: str, size_columns: list[str]) -> list[str]:
    """The columns the keep rule reads."""
    return ["sample_id", "ordinal"] + (size_columns if rule == "largest" else [rule[4:]] if rule.startswith("max:")
                                       else [])


def labels(table: pa.Table, rule: str, size_of: Callable[[pa.Table], list]) -> list[str]:
    """One sortable label per row; the smallest of a set survives."""
    ordinal = table.column("ordinal").to_pylist()
    ids = table.column("sample_id").to_pylist()
    if rule == "first":
        ranks = [""] * len(ids)
    elif rule == "largest":
        ranks = [descending(s) for s in size_of(table)]
    else:
        column = rule[4:]
        if column not in table.column_names:
            raise ValueError(f"keep={rule!r}: there is no column {column!r}")
        ranks = [descending(v) for v in table.column(column).to_pylist()]
    return [f"{r}{o:020d}|{i}" for r, o, i in zip(ranks, ordinal, ids)]
