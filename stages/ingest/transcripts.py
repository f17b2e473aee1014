"""Timed transcripts: SubRip (.srt), WebVTT (.vtt) and segment JSON, as [{start, end, text}].

Segment JSON is what speech tools write: a list of {"start", "end", "text"}, or an
object with such a list under "segments" (Whisper's output). Times are seconds.
"""
from __future__ import annotations

import json
import re
from typing import Any

_TIME = re.compile(r"(?:(\d+):)?(\d{1,2}):(\d{2})[.,](\d{1,3})")
_CUE = re.compile(rf"({_TIME.pattern})\s*-->\s*({_TIME.pattern})")
_TAGS = re.compile(r"<[^>]*>")


class TranscriptError(ValueError):
    """A timed transcript that does not parse."""


def _seconds(h: str | None, m: str, s: str, ms: str) -> float:
    return int(h or 0) * 3600 + int(m) * 60 + int(s) + int(ms.ljust(3, "0")) / 1000


def parse_cues(text: str) -> list[dict[str, Any]]:
    """SubRip or WebVTT cues: a timing line, then text lines up to a blank line."""
    cues, current = [], None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        m = _CUE.search(line)
        if m:
            g = m.groups()
            current = {"start": _seconds(*g[1:5]), "end": _seconds(*g[6:10]), "text": ""}
            cues.append(current)
        elif not line.strip():
            current = None
        elif current is not None:
            current["text"] = (current["text"] + " " + _TAGS.sub("", line).strip()).strip()
    if not cues and text.strip() and not text.lstrip().startswith("WEBVTT"):
        raise TranscriptError("no cue with a 'start --> end' timing line")
    return [c for c in cues if c["end"] > c["start"]]


def parse_segments(data: Any) -> list[dict[str, Any]]:
    """Segment JSON: a list of {start, end, text}, or {"segments": [...]}."""
    items = data.get("segments") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise TranscriptError("no list of segments")
    out = []
    for s in items:
        try:
            start, end = float(s["start"]), float(s["end"])
        except (TypeError, KeyError, ValueError):
            raise TranscriptError("a segment without numeric start and end") from None
        if end > start:
            out.append({"start": start, "end": end, "text": str(s.get("text", "")).strip()})
    return out


def parse(name: str, raw: bytes) -> list[dict[str, Any]]:
    """A timed transcript by its extension (.srt, .vtt, .json)."""
    text = raw.decode("utf-8-sig", "replace")
    if name.lower().endswith(".json"):
        try:
            return parse_segments(json.loads(text))
        except ValueError as e:
            raise TranscriptError(f"not JSON: {str(e)[:100]}") from None
    return parse_cues(text)


def text_within(cues: list[dict[str, Any]], start: float, end: float) -> str:
    """The text of the cues whose middle falls in [start, end)."""
    return " ".join(c["text"] for c in cues if start <= (c["start"] + c["end"]) / 2 < end and c["text"]).strip()
