"""media.local_path: a path for programs that want one, from a reference or from bytes."""
from __future__ import annotations

import os

from pipeline import media


def test_local_path_of_references_and_bytes(tmp_path):
    whole = tmp_path / "a.bin"
    whole.write_bytes(b"0123456789")
    with media.local_path(media.ref(str(whole), 10)) as path:
        assert path == str(whole)  # a local, whole file is used as it is
    with media.local_path(media.ref(str(whole), 4, offset=3)) as path:
        assert open(path, "rb").read() == b"3456" and path != str(whole)
    assert not os.path.exists(path)  # the range's copy goes after
    with media.local_path(b"\x00bytes") as path:
        assert open(path, "rb").read() == b"\x00bytes"
    assert not os.path.exists(path)
