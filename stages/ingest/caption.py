"""Caption normalisation: valid UTF-8, NFC, no control characters, single spaces."""
from __future__ import annotations

import re
import unicodedata

from pipeline.ledger import Rejected

_WHITESPACE = re.compile(r"\s+")
# Invisible characters with no meaning in a caption (the ZWJ of emoji sequences stays).
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u2060"), None)




def normalize_caption(raw: bytes | str | None, invalid_utf8: str = "repair") -> str:
    """Normalised caption, or Rejected (missing, invalid UTF-8, empty).

    invalid_utf8: "repair" replaces undecodable bytes with U+FFFD, "reject" rejects.
    """
    if raw is None:
        raise Rejected("missing_caption", "no caption for this sample")
    if isinstance(raw, str):
        # Manifests are read with surrogateescape, so invalid bytes survive as surrogates.
        raw = raw.encode("utf-8", "surrogateescape")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if invalid_utf8 == "reject":
            raise Rejected("invalid_utf8", f"caption is not valid UTF-8: {e}") from None
        text = raw.decode("utf-8", "replace")
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    # Whitespace controls become spaces; every other control character goes.
    text = "".join(" " if ch in "\t\n\r\v\f" else ch for ch in text
                   if ch in "\t\n\r\v\f" or unicodedata.category(ch) != "Cc")
    text = _WHITESPACE.sub(" ", text).strip()
    if not text:
        raise Rejected("empty_caption", "caption is empty after normalisation")
    return text
