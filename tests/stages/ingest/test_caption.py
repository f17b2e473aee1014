import pytest

from pipeline.ledger import Rejected
from stages.ingest.caption import normalize_caption


def test_nfc_whitespace_and_controls():
    assert normalize_caption("  Cafe\u0301\tau\n\n lait\x00\x1b ") == "Caf\u00e9 au lait"


def test_invalid_utf8_repair_or_reject():
    assert normalize_caption(b"a\xffb") == "a\ufffdb"
    with pytest.raises(Rejected) as e:
        normalize_caption(b"a\xffb", invalid_utf8="reject")
    assert e.value.reason == "invalid_utf8"


@pytest.mark.parametrize("raw,reason", [(None, "missing_caption"), ("", "empty_caption"),
                                        ("\x00\x01 \t", "empty_caption")])
def test_missing_and_empty(raw, reason):
    with pytest.raises(Rejected) as e:
        normalize_caption(raw)
    assert e.value.reason == reason
