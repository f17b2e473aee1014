"""ingest_code: files from git's tree at one commit, never the working tree; no hook, filter
or fsmonitor runs; nothing outside the repository is read; every hostile case has its reason."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from pipeline import fs, ledger
from stages.ingest.code import IngestCode, decode_text, language_of


def git(repo, *args):
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env).stdout


@pytest.fixture
def hostile(tmp_path):
    """A repository that tries everything: hooks and an fsmonitor that would leave a marker,
    a symlink out of it, a submodule, ignored and untracked files, binary and Latin-1 files."""
    repo = tmp_path / "hostile"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "app.py").write_text('"""An app."""\n\ndef main():\n    return 1\n')
    (repo / "lib").mkdir()
    (repo / "lib" / "util.js").write_text("export const x = 1;\n")
    (repo / "run").write_text("#!/usr/bin/env python3\nprint('hi')\n")
    (repo / "latin.py").write_bytes("# -*- coding: latin-1 -*-\nname = 'caf\xe9'\n".encode("latin-1"))
    (repo / "bad.txt").write_bytes("caf\xe9 without a cookie\n".encode("latin-1"))
    (repo / "blob.bin").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0" + bytes(range(256)))
    (repo / "big.py").write_text("x = 1\n" * 50_000)
    os.symlink("/etc/passwd", repo / "escape")
    (repo / ".gitignore").write_text("secret.env\n")
    git(repo, "add", "-A")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{'1' * 40},vendor/sub")
    git(repo, "commit", "-q", "-m", "init")
    # after the commit: an ignored file, an untracked file, a working-tree edit, and traps
    (repo / "secret.env").write_text("TOKEN=ignored\n")
    (repo / "untracked.py").write_text("print('not committed')\n")
    (repo / "app.py").write_text("print('edited, not committed')\n")
    marker = tmp_path / "ran"
    for hook in ("post-checkout", "pre-commit", "post-index-change", "reference-transaction"):
        path = repo / ".git" / "hooks" / hook
        path.write_text(f"#!/bin/sh\ntouch {marker}\n")
        path.chmod(0o755)
    with open(repo / ".git" / "config", "a") as f:
        f.write(f"[core]\n\tfsmonitor = touch {marker}\n\thooksPath = {repo / '.git' / 'hooks'}\n"
                f"[filter \"evil\"]\n\tsmudge = touch {marker}\n[alias]\n\tls-tree = !touch {marker}\n")
    (repo / ".gitattributes").write_text("* filter=evil\n")
    return repo, marker


def _run(source, **params):
    stage = IngestCode({"source": str(source), **params})
    rows = [r for t in stage.list_inputs() for r in t.to_pylist()]
    import pyarrow as pa

    out = stage.process(pa.Table.from_pylist(rows, schema=next(stage.list_inputs()).schema)).to_pylist()
    return rows, {r["path"] if r.get("path") else r["repo"]: r for r in out}


def test_files_come_from_the_commit_and_no_hook_runs(hostile):
    repo, marker = hostile
    parents, files = _run(repo, max_file_bytes=100_000)
    assert len(parents) == 1 and not marker.exists()
    kept = {p: r for p, r in files.items() if r.get("reject") is None}
    assert set(kept) == {"app.py", "lib/util.js", "run", "latin.py", ".gitignore"}
    assert kept["app.py"]["content"].startswith('"""An app."""')  # the commit's, not the edited working tree
    commit = git(repo, "rev-parse", "HEAD").decode().strip()
    assert {r["commit"] for r in files.values()} == {commit}
    assert all(r["parent_id"] == parents[0]["sample_id"] for r in files.values())
    assert kept["app.py"]["source_uri"].endswith(f"@{commit}:app.py") and kept["app.py"]["language"] == "Python"
    assert kept["run"]["language"] == "Python" and kept["lib/util.js"]["language"] == "JavaScript"
    assert kept["latin.py"]["content"] == "# -*- coding: latin-1 -*-\nname = 'caf\u00e9'\n"
    reasons = {p: r["reject"]["reason"] for p, r in files.items() if r.get("reject")}
    assert reasons == {"escape": "symlink", "vendor/sub": "submodule", "bad.txt": "encoding", "blob.bin": "binary",
                       "big.py": "too_large"}
    assert "secret.env" not in files and "untracked.py" not in files
    assert "/etc/passwd" not in str(files) and "root:" not in str(files)


def test_a_repository_that_points_outside_itself_is_refused(tmp_path, hostile):
    repo, _ = hostile
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    alt = tmp_path / "alt"
    git(tmp_path, "init", "-q", "alt")
    os.makedirs(alt / ".git" / "objects" / "info", exist_ok=True)
    (alt / ".git" / "objects" / "info" / "alternates").write_text(str(repo / ".git" / "objects") + "\n")
    for path in (worktree, alt):
        _, out = _run(path)
        (only,) = out.values()
        assert only["reject"]["reason"] == "unsafe_repository", only["reject"]


def test_a_folder_of_repositories_a_bare_one_and_plain_folders(tmp_path, hostile):
    repo, _ = hostile
    many = tmp_path / "many"
    many.mkdir()
    git(many, "clone", "-q", "--bare", "--no-hardlinks", str(repo), "bare.git")
    (many / "plain").mkdir()
    (many / "plain" / "a.py").write_text("a = 1\n")
    os.symlink("/etc", many / "plain" / "etc")
    parents, files = _run(many)
    assert len(parents) == 2
    assert files[str(many / "plain")]["reject"]["reason"] == "not_a_repository"
    assert files["app.py"]["repo"].endswith("bare.git") and files["app.py"].get("reject") is None
    _, plain = _run(many / "plain", allow_plain_folders=True)
    assert plain["a.py"]["content"] == "a = 1\n" and plain["a.py"]["commit"] is None
    assert plain["etc"]["reject"]["reason"] == "symlink"


def test_a_manifest_is_confined_and_refs_are_checked(tmp_path, hostile):
    repo, _ = hostile
    manifest = tmp_path / "repos.jsonl"
    manifest.write_text('{"repo": "hostile"}\n{"repo": "/etc"}\n{"repo": "ftp://example.com/x.git"}\n')
    parents, files = _run(manifest)
    assert [p["reject"]["reason"] for p in parents if p["reject"]] == ["path_outside_root"] and "app.py" in files
    assert files["ftp://example.com/x.git"]["reject"]["reason"] == "unsupported_url"
    _, out = _run(repo, ref="--output=/tmp/x")
    assert next(iter(out.values()))["reject"]["reason"] == "bad_ref"
    _, out = _run(repo, ref="no-such-branch")
    assert next(iter(out.values()))["reject"]["reason"] == "bad_ref"


def test_text_and_language_rules():
    assert decode_text("\ufeffh\u00e9".encode("utf-8")) == "h\u00e9"
    with pytest.raises(ledger.Rejected):
        decode_text(b"a\0b")
    assert language_of("x/Makefile") == "Makefile" and language_of("a.rs") == "Rust"
    assert language_of("tool", b"#!/bin/bash\necho") == "Bash" and language_of("tool", b"data") is None


def test_the_parse_confirms_the_language(tmp_path):
    """A name that claims a grammar is checked by it; an ambiguous .h goes to the grammar that reads it."""
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "ok.py").write_text("def f(x):\n    return x * 2\n")
    (folder / "prose.py").write_text("This file is a letter to a friend, written in plain words, not code.\n")
    (folder / "vec.h").write_text("#pragma once\nnamespace geo {\ntemplate <typename T> class Vec {\n"
                                   "public:\n  T x, y;\n  T dot(const Vec& o) const { return x * o.x + y * o.y; }\n"
                                   "};\n}\n")
    (folder / "plain.h").write_text("#ifndef PLAIN_H\n#define PLAIN_H\nint add(int a, int b);\n#endif\n")
    (folder / "notes.md").write_text("# Notes\n")
    _, files = _run(folder, allow_plain_folders=True)
    assert (files["ok.py"]["language"], files["ok.py"]["language_confirmed"]) == ("Python", True)
    assert files["ok.py"]["parse_error_share"] == 0.0
    assert (files["prose.py"]["language"], files["prose.py"]["language_confirmed"]) == ("Python", False)
    assert (files["vec.h"]["language"], files["vec.h"]["language_confirmed"]) == ("C++", True)
    assert (files["plain.h"]["language"], files["plain.h"]["language_confirmed"]) == ("C", True)
    assert files["notes.md"]["language_confirmed"] is None and files["notes.md"]["parse_error_share"] is None


def test_ingest_code_in_a_job_balances(ray_session, tmp_path, hostile):
    from pipeline.runner import Runner
    from tests.pipeline.helpers import make_job

    repo, marker = hostile
    out = str(tmp_path / "run")
    Runner(make_job(IngestCode({"source": str(repo)})), out, log=lambda *a: None).run()
    audit = ledger.audit(out)
    assert audit["ok"] and audit["inputs"] == 1 and audit["expanded"] == 1 and not marker.exists()
    kept = fs.read_parquet_dir(os.path.join(out, "stages", "01-ingest_code"), ["path"])
    assert sorted(kept.column("path").to_pylist()) == [".gitignore", "app.py", "big.py", "latin.py", "lib/util.js", "run"]


def test_this_repository_end_to_end(ray_session, tmp_path):
    """A real repository (this one, at its HEAD) through ingest_code, filter_code and
    extract_functions on Ray: the audit balances, and its own documented functions come out."""
    import pyarrow as pa

    from pipeline.runner import Runner
    from stages.filters.code import FilterCode
    from stages.segment.code import ExtractFunctions
    from tests.conftest import ROOT
    from tests.pipeline.helpers import make_job

    out = str(tmp_path / "run")
    Runner(make_job(IngestCode({"source": ROOT}), FilterCode({}), ExtractFunctions({"require_docstring": True})),
           out, log=lambda *a: None).run()
    audit = ledger.audit(out)
    assert audit["ok"], audit
    last = sorted(d for d in os.listdir(os.path.join(out, "stages")))[-1]
    kept = fs.read_parquet_dir(os.path.join(out, "stages", last), ["name", "kind", "docstring", "path"])
    rows = kept.to_pylist()
    assert any(r["name"] == "decode_text" and r["path"] == "stages/ingest/code.py" for r in rows)
    functions = [r for r in rows if r["kind"] in ("function", "method")]
    assert len(functions) > 200 and all(r["docstring"] for r in functions)
    assert isinstance(kept, pa.Table)


def test_code_to_shards(ray_session, tmp_path, hostile):
    """ingest_code -> filter_code -> detect_license -> redact_secrets -> extract_functions ->
    shards: the checker passes, each item is `<key>.src.<ext>` (+ `<key>.txt` for its
    documentation), secrets do not reach the shards, and the audit balances."""

    from pipeline.runner import Runner
    from stages.filters.code import FilterCode
    from stages.filters.license import DetectLicense
    from stages.filters.secrets import RedactSecrets
    from stages.segment.code import ExtractFunctions
    from stages.shard.webdataset import ShardWebDataset
    from tests.pipeline.helpers import make_job
    from tests.shards import check_shards, tar_members

    repo, marker = hostile
    (repo / "keys.py").write_text('"""Settings."""\nAWS_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
                                  'OWNER = "jane.doe@example.org"\n\n\ndef owner():\n    """Who owns it."""\n'
                                  '    return OWNER\n')
    safe = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"]  # the test's own git, past the traps
    git(repo, *safe, "add", "keys.py")
    git(repo, *safe, "commit", "-q", "-m", "keys")
    assert not marker.exists()
    out = str(tmp_path / "run")
    job = make_job(IngestCode({"source": str(repo)}), FilterCode({}), DetectLicense({"unknown_license": "flag"}),
                   RedactSecrets({}), ExtractFunctions({}), ShardWebDataset({"name": "code", "samples_per_shard": 8}))
    Runner(job, out, log=lambda *a: None).run()
    assert ledger.audit(out)["ok"] and not marker.exists()
    check_shards(os.path.join(out, "shards"))
    members = tar_members(os.path.join(out, "shards"))
    names = {n.split(".", 1)[1] for n in members}
    assert {"src.py", "src.js", "txt", "json"} <= names
    everything = b"".join(members.values())
    assert b"AKIAIOSFODNN7EXAMPLE" not in everything and b"jane.doe@example.org" not in everything
    assert b'AWS_KEY = "<KEY>"' in everything and b"Who owns it." in everything


def test_archives_are_read_member_by_member(tmp_path):
    import io
    import tarfile
    import zipfile

    tgz = tmp_path / "snap.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        for name, data in (("pkg/a.py", b"a = 1\n"), ("../evil.py", b"x = 1\n"), ("pkg/big.txt", b"x" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("pkg/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    archive = tmp_path / "snap.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("b.js", "export const b = 2;\n")
        zf.writestr("bomb.txt", "0" * 200_000)  # compresses to almost nothing
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"repo": "snap.tar.gz"}\n{"repo": "snap.zip"}\n')
    _, files = _run(manifest, max_file_bytes=4096)
    reasons = {p: (r["reject"] or {}).get("reason") for p, r in files.items()}
    assert reasons == {"pkg/a.py": None, "../evil.py": "unsafe_path", "pkg/big.txt": "too_large",
                       "pkg/passwd": "symlink", "b.js": None, "bomb.txt": "too_large"}
    assert files["pkg/a.py"]["content"] == "a = 1\n" and files["b.js"]["language"] == "JavaScript"


@pytest.fixture
def git_daemon(tmp_path, hostile):
    """The hostile repository served by `git daemon` on 127.0.0.1 (stopped after the test)."""
    import socket
    import time

    repo, _ = hostile
    served = tmp_path / "served"
    served.mkdir()
    git(served, "clone", "-q", "--bare", str(repo), "hostile.git")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={served}",
                               "--listen=127.0.0.1", f"--port={port}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"git://127.0.0.1:{port}/hostile.git"
    os.killpg(daemon.pid, signal.SIGKILL)  # `git daemon` runs git-daemon as a child: the whole group goes
    daemon.wait()


def test_a_url_is_cloned_bare_and_shallow_with_limits(tmp_path, git_daemon, hostile):
    _, marker = hostile
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text(f'{{"repo": "{git_daemon}"}}\n')
    _, blocked = _run(manifest)
    assert blocked[git_daemon]["reject"]["reason"] == "blocked_address"
    _, files = _run(manifest, allow_private_networks=True)
    assert files["app.py"]["repo"] == git_daemon and files["app.py"]["content"].startswith('"""An app."""')
    assert files["escape"]["reject"]["reason"] == "symlink" and not marker.exists()
    _, capped = _run(manifest, allow_private_networks=True, max_clone_bytes=2048)
    assert capped[git_daemon]["reject"]["reason"] == "too_large"
