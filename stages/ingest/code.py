"""Stage `ingest_code`: repositories become their files, each a child sample.

A source is a repository (a folder with `.git`, or a bare repository), a folder whose
subfolders are repositories, or a manifest (.jsonl/.csv/.parquet) with a `repo` column
of repository paths (relative to the manifest, confined to its folder and
`allowed_roots`), archives (.tar.gz, .zip: read member by member, nothing extracted)
or git URLs (https, http, git: cloned bare and shallow by the worker, with a time
limit, a byte cap and the private-address guard). Every file comes from git's tree at `ref` (stages.ingest.git: plumbing
only, no hook, filter or fsmonitor ever runs, no working tree is read, so ignored and
untracked files never appear). Sizes come from the tree before anything is read: a
`too_large` file costs nothing. Symlinks are blobs that would point somewhere: rejected
(`symlink`), never followed; submodules are recorded and skipped (`submodule`); a NUL
in the first 8,000 bytes (git's own test) is `binary`; text is UTF-8, else the
encoding its coding cookie declares (PEP 263 style, first two lines), else `encoding`.
A folder that is not a repository is read as plain files only with
`allow_plain_folders` (same symlink, size and text rules; `commit` is null).

Each file's locator is `repo@commit:path`; its columns `repo`, `commit`, `path`,
`language` (from the file name, extension and shebang), `size` and `content`. For
the languages with a tree-sitter grammar the parse confirms the name: `parse_error_share`
is the share of bytes the grammar cannot read and `language_confirmed` says whether it
is at most `confirm_share` (null without a grammar); an ambiguous `.h` becomes C or C++
by whichever grammar reads more of it. The address guard checks the URL's host before
cloning; git resolves it again (DNS rebinding is not closed).
"""
from __future__ import annotations

import codecs
import json
import os
import re
from typing import Any, Iterator

import pyarrow as pa
from pydantic import Field

from pipeline import ledger
from pipeline.stage import Column, Params, Resources, Stage
from schemas import IDENTITY, REJECT

from .git import Repository
from .grammars import error_share, parser

BINARY_PROBE = 8000  # bytes git looks at for a NUL
ARCHIVES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz", ".zip")
COOKIE = re.compile(rb"^[ \t\f]*#.*?coding[:=][ \t]*([-\w.]+)")
EXTENSIONS = {
    ".py": "Python", ".pyi": "Python", ".js": "JavaScript", ".mjs": "JavaScript", ".cjs": "JavaScript",
    ".jsx": "JavaScript", ".ts": "TypeScript", ".tsx": "TypeScript", ".java": "Java", ".go": "Go", ".rs": "Rust",
    ".c": "C", ".h": "C", ".cc": "C++", ".cpp": "C++", ".cxx": "C++", ".hpp": "C++", ".hh": "C++", ".hxx": "C++",
    ".cs": "C#", ".rb": "Ruby", ".php": "PHP", ".sh": "Bash", ".bash": "Bash", ".zsh": "Shell", ".kt": "Kotlin",
    ".swift": "Swift", ".scala": "Scala", ".pl": "Perl", ".pm": "Perl", ".lua": "Lua", ".r": "R", ".sql": "SQL",
    ".html": "HTML", ".htm": "HTML", ".css": "CSS", ".scss": "SCSS", ".md": "Markdown", ".rst": "reStructuredText",
    ".json": "JSON", ".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".xml": "XML", ".ini": "INI", ".cfg": "INI",
    ".txt": "Text", ".ipynb": "Jupyter Notebook", ".proto": "Protocol Buffer", ".dockerfile": "Dockerfile",
}
FILENAMES = {"Makefile": "Makefile", "makefile": "Makefile", "GNUmakefile": "Makefile", "Dockerfile": "Dockerfile",
             "CMakeLists.txt": "CMake", "Gemfile": "Ruby", "Rakefile": "Ruby", "BUILD": "Starlark",
             "LICENSE": "Text", "COPYING": "Text", "README": "Text"}
SHEBANGS = {"python": "Python", "node": "JavaScript", "bash": "Bash", "sh": "Bash", "dash": "Bash", "zsh": "Shell",
            "ruby": "Ruby", "perl": "Perl", "php": "PHP", "deno": "TypeScript", "ts-node": "TypeScript"}
FILE_COLUMNS = [("repo", pa.string()), ("commit", pa.string()), ("path", pa.string()), ("language", pa.string()),
                ("size", pa.int64()), ("content", pa.string()), ("src_ext", pa.string()),
                ("language_confirmed", pa.bool_()), ("parse_error_share", pa.float64())]
AMBIGUOUS = {".h": ("C", "C++")}  # the first wins a tie


def language_of(path: str, head: bytes = b"") -> str | None:
    """A file's language from its name, its extension, else its shebang line."""
    name = os.path.basename(path)
    if name in FILENAMES:
        return FILENAMES[name]
    ext = os.path.splitext(name)[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext]
    if head.startswith(b"#!"):
        words = head[2:].split(b"\n", 1)[0].decode("latin-1").replace("/usr/bin/env", " ").split()
        program = os.path.basename(words[0]) if words else ""
        return SHEBANGS.get(re.sub(r"[\d.]+$", "", program))
    return None


def confirm_language(path: str, language: str | None, text: str) -> tuple[str | None, float | None]:
    """The language the parse supports, and the share of the text its grammar cannot read
    (None without a grammar). An ambiguous extension takes the grammar that reads most."""
    choices = AMBIGUOUS.get(os.path.splitext(path)[1].lower(), (language,)) if language else (language,)
    data = text.encode("utf-8", "surrogatepass")
    best, best_share = language, None
    for candidate in choices:
        found = parser(candidate) if candidate else None
        if found is None:
            continue
        share = error_share(found.parse(data), len(data))
        if best_share is None or share < best_share:
            best, best_share = candidate, share
        if share == 0.0:
            break
    return best, best_share


def src_ext(path: str) -> str:
    """The shard member suffix of a file: `src.` and its own extension (`src.py`, `src.json`),
    never colliding with the sample's `.json`; `src` alone without one."""
    ext = re.sub(r"[^a-z0-9]", "", os.path.splitext(os.path.basename(path))[1].lower())[:16]
    return f"src.{ext}" if ext else "src"


def decode_text(data: bytes) -> str:
    """A file's text: UTF-8 (a BOM dropped), else the coding its cookie declares. Raises
    Rejected (binary, encoding)."""
    if b"\0" in data[:BINARY_PROBE]:
        raise ledger.Rejected("binary", "a NUL byte in the first 8000 bytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    for line in data.split(b"\n", 2)[:2]:
        found = COOKIE.match(line)
        if found:
            name = found.group(1).decode("ascii", "replace")
            try:
                return data.decode(codecs.lookup(name).name)
            except (LookupError, UnicodeDecodeError):
                raise ledger.Rejected("encoding", f"not valid {name[:40]} as its coding cookie says") from None
    raise ledger.Rejected("encoding", "not UTF-8, and no coding cookie declares another encoding")


class IngestCodeParams(Params):
    source: str = Field(..., description="a repository, a folder of repositories, or a manifest with a `repo` column")
    ref: str = Field("HEAD", description="the branch, tag or commit to read")
    repo_column: str = Field("repo", description="manifest column with repository paths")
    allowed_roots: list[str] = Field(default_factory=list, description="folders outside the manifest's own that "
                                                                        "its repository paths may point into")
    max_file_bytes: int = Field(1 << 20, ge=1, description="larger files are too_large (sizes from the tree, "
                                                           "nothing read)")
    allow_plain_folders: bool = Field(False, description="read a folder that is not a repository as plain files")
    git_timeout: float = Field(600.0, gt=0, le=86_400, description="seconds each git call may take")
    clone_timeout: float = Field(600.0, gt=0, le=86_400, description="seconds a clone of a URL may take")
    max_clone_bytes: int = Field(1 << 30, ge=1024, description="a clone that writes more is too_large")
    allow_private_networks: bool = Field(False, description="clone from loopback and private addresses")
    confirm_share: float = Field(0.1, ge=0, le=1, description="a file whose grammar cannot read more than this "
                                                              "share of its bytes has language_confirmed false")


class IngestCode(Stage):
    """Repositories into their files (from git's tree at one commit, never a working tree)."""

    name = "ingest_code"
    Params = IngestCodeParams
    resources = Resources(num_cpus=1, batch_size=1)
    placement = frozenset({"git_timeout", "clone_timeout"})
    reason_hints = {"not_a_repository": "allow_plain_folders reads plain folders",
                    "too_large": "max_file_bytes", "bad_ref": "ref names the commit to read"}

    def adds(self) -> list[Column]:
        # the text is a member of its own, named by the file's extension: <key>.src.py
        return [Column("content", "text", format="@src_ext"), Column("src_ext"), Column("repo"), Column("commit"),
                Column("path"), Column("language"), Column("size", "metric", label="file size (bytes)"),
                Column("language_confirmed"),
                Column("parse_error_share", "metric", label="share of bytes the grammar cannot read")]

    def report_columns(self) -> list[str]:
        return ["language", "language_confirmed", "kind"]

    def report_sections(self, run_root: str, kept) -> list[dict[str, Any]]:
        """Languages of what was kept (files, and definitions when functions were extracted),
        and previews of the first kept files and functions."""
        return code_report(run_root, kept)

    # -- listing (driver) ----------------------------------------------------------
    def _repositories(self) -> Iterator[tuple[str, tuple[str, str] | None]]:
        """(path, reject or None) of each repository the source names."""
        src = os.path.realpath(self.params.source)
        if os.path.isfile(src):
            yield from self._from_manifest(src)
            return
        if not os.path.isdir(src):
            raise ValueError(f"{self.params.source}: no such repository, folder or manifest")
        if _looks_like_repository(src):
            yield src, None
            return
        entries = sorted(os.scandir(src), key=lambda e: e.name)
        subfolders = [e for e in entries if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")]
        if self.params.allow_plain_folders and not any(_looks_like_repository(e.path) for e in subfolders):
            yield src, None  # a plain folder of files, read as one
            return
        for entry in entries:
            if entry in subfolders:
                yield entry.path, None
            elif entry.is_symlink():
                yield entry.path, ("symlink", "a symbolic link in the source folder is not followed")
        if not subfolders:
            yield src, None  # neither a repository nor a folder of them: rejected by files()

    def _from_manifest(self, manifest: str) -> Iterator[tuple[str, tuple[str, str] | None]]:
        import pyarrow.csv as pcsv
        import pyarrow.json as pjson
        import pyarrow.parquet as pq

        readers = {".jsonl": pjson.read_json, ".json": pjson.read_json, ".csv": pcsv.read_csv,
                   ".parquet": pq.read_table}
        ext = os.path.splitext(manifest)[1].lower()
        if ext not in readers:
            raise ValueError(f"{manifest}: a manifest is .jsonl, .csv or .parquet")
        table = readers[ext](manifest)
        if self.params.repo_column not in table.column_names:
            raise ValueError(f"{manifest}: no {self.params.repo_column!r} column (has {table.column_names})")
        base = os.path.dirname(manifest)
        roots = [base] + [os.path.realpath(r) for r in self.params.allowed_roots]
        for value in table.column(self.params.repo_column).to_pylist():
            if not value:
                yield str(value), ("missing_repo", f"an empty {self.params.repo_column!r}")
                continue
            if "://" in str(value):  # cloned by a worker (https, http, git; checked there)
                yield str(value), None
                continue
            path = os.path.realpath(os.path.join(base, str(value)))
            if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
                yield str(value), ("path_outside_root", "outside the manifest's folder and allowed_roots")
                continue
            yield path, None

    def list_inputs(self, limit: int | None = None) -> Iterator[pa.Table]:
        rows = []
        for ordinal, (path, why) in enumerate(self._repositories()):
            if limit is not None and ordinal >= limit:
                break
            rows.append({"sample_id": ledger.sample_id(path, self.params.ref), "ordinal": ordinal, "modality": "code",
                         "source_uri": path, "meta": "{}", "repo": path, "_source_stat": None if why else self._stat(path),
                         "reject": ledger.reject(*why) if why else None})
        schema = pa.schema([*IDENTITY, pa.field("repo", pa.string()), pa.field("_source_stat", pa.string()),
                            pa.field("reject", REJECT)])
        yield pa.Table.from_pylist(rows, schema=schema)

    def _stat(self, path: str) -> str | None:
        """What the input is now, so that a refresh can tell a changed one: a repository's
        commit at `ref`, an archive's size and mtime (None where the worker finds out: a
        URL, a plain folder, a repository that will be rejected)."""
        try:
            if "://" in path:
                return None
            if os.path.isfile(path):
                st = os.stat(path)
                return f"{st.st_size}:{st.st_mtime_ns}"
            if _looks_like_repository(path):
                with Repository(path, min(self.params.git_timeout, 60.0)) as repo:
                    return repo.commit(self.params.ref)
        except (OSError, ledger.Rejected):
            pass
        return None

    # -- reading (workers) -----------------------------------------------------------
    def process(self, batch: pa.Table) -> pa.Table:
        return ledger.fan_out(batch, self._split, FILE_COLUMNS)

    def _split(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        children = list(self.files(row))
        if not children:
            raise ledger.Rejected("empty_repository", "no file at this commit")
        return children

    def files(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        path = row["repo"]
        if "://" in path:
            yield from self._clone(row, path)
            return
        if path.lower().endswith(ARCHIVES):
            yield from self._archive(row, path)
            return
        if not _looks_like_repository(path):
            if not self.params.allow_plain_folders:
                raise ledger.Rejected("not_a_repository", "not a git repository (allow_plain_folders reads plain "
                                                          "folders)")
            yield from self._plain(row, path)
            return
        yield from self._repository(row, path, path)

    def _clone(self, row: dict[str, Any], url: str) -> Iterator[dict[str, Any]]:
        import tempfile

        from .git import clone

        p = self.params
        with tempfile.TemporaryDirectory(prefix="mmcurate-clone-") as work:
            where = clone(url, work, p.ref, p.clone_timeout, p.max_clone_bytes, p.allow_private_networks)
            yield from self._repository(row, where, url, ref="HEAD")  # the clone holds the asked ref as HEAD

    def _repository(self, row: dict[str, Any], path: str, label: str, ref: str | None = None
                    ) -> Iterator[dict[str, Any]]:
        with Repository(path, self.params.git_timeout) as repo:
            commit = repo.commit(ref or self.params.ref)
            entries = repo.tree(commit)
            wanted = []
            for e in entries:
                child = self._child(row, label, commit, e.path, e.size)
                if e.symlink:
                    yield _rejected(child, "symlink", "a symbolic link is not followed")
                elif e.submodule:
                    yield _rejected(child, "submodule", f"a submodule at commit {e.sha}: recorded, not read")
                elif e.size is not None and e.size > self.params.max_file_bytes:
                    yield _rejected(child, "too_large", f"{e.size} bytes > max_file_bytes={self.params.max_file_bytes}")
                else:
                    wanted.append((e, child))
            by_sha = {}
            for e, _ in wanted:
                by_sha.setdefault(e.sha, []).append(e)
            data = dict(repo.blobs(list(by_sha)))
            for e, child in wanted:
                yield self._read(child, data[e.sha])

    def _archive(self, row: dict[str, Any], path: str) -> Iterator[dict[str, Any]]:
        """A .tar(.gz) or .zip read member by member, nothing extracted: links are rejected,
        paths that climb out are rejected, sizes are checked before reading and reads are
        bounded (a zip bomb's declared size is not trusted)."""
        import tarfile
        import zipfile

        limit = self.params.max_file_bytes
        try:
            if path.lower().endswith(".zip"):
                with zipfile.ZipFile(path) as zf:
                    for info in zf.infolist():
                        if info.is_dir():
                            continue
                        child = self._child(row, path, None, info.filename, info.file_size)
                        link = (info.external_attr >> 16) & 0o170000 == 0o120000
                        yield self._member(child, info.filename, info.file_size, link,
                                           lambda i=info: zf.open(i).read(limit + 1))
            else:
                with tarfile.open(path, "r:*") as tf:
                    for m in tf:
                        if m.isdir():
                            continue
                        child = self._child(row, path, None, m.name, m.size)
                        if not (m.isfile() or m.issym() or m.islnk()):
                            yield _rejected(child, "special_file", "a device, FIFO or other special file")
                            continue
                        yield self._member(child, m.name, m.size, m.issym() or m.islnk(),
                                           lambda m=m: tf.extractfile(m).read(limit + 1))
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise ledger.Rejected("corrupt_archive", f"{type(e).__name__}: {ledger.without_bytes(str(e))[:200]}") \
                from None

    def _member(self, child: dict[str, Any], name: str, size: int, link: bool, read) -> dict[str, Any]:
        parts = name.replace("\\", "/").split("/")
        if name.startswith("/") or ".." in parts:
            return _rejected(child, "unsafe_path", "an absolute path or one that climbs out of the archive")
        if link:
            return _rejected(child, "symlink", "a link is not followed")
        if size > self.params.max_file_bytes:
            return _rejected(child, "too_large", f"{size} bytes > max_file_bytes={self.params.max_file_bytes}")
        data = read()
        if len(data) > self.params.max_file_bytes:
            return _rejected(child, "too_large", f"more than max_file_bytes={self.params.max_file_bytes} when read")
        return self._read(child, data)

    def _plain(self, row: dict[str, Any], root: str) -> Iterator[dict[str, Any]]:
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs[:] = sorted(d for d in dirs if d != ".git" and not os.path.islink(os.path.join(folder, d)))
            links = [d for d in os.listdir(folder) if os.path.islink(os.path.join(folder, d))]
            for name in sorted(set(names) | set(links)):
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, root)
                size = os.lstat(full).st_size
                child = self._child(row, root, None, rel, size)
                if os.path.islink(full):
                    yield _rejected(child, "symlink", "a symbolic link is not followed")
                elif size > self.params.max_file_bytes:
                    yield _rejected(child, "too_large", f"{size} bytes > max_file_bytes={self.params.max_file_bytes}")
                else:
                    fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW)
                    with os.fdopen(fd, "rb") as f:
                        yield self._read(child, f.read(self.params.max_file_bytes + 1))

    def _child(self, row: dict[str, Any], repo: str, commit: str | None, path: str, size: int | None) -> dict[str, Any]:
        locator = f"{repo}@{commit or 'plain'}:{path}"
        fields = {k: v for k, v in row.items() if k not in ("reject", "sample_id", "parent_id")}
        return ledger.child(row, locator, **{**fields, "repo": repo, "commit": commit, "path": path,
                                            "language": language_of(path), "size": size, "content": None,
                                            "src_ext": src_ext(path),
                                            "meta": json.dumps({"locator": locator}, ensure_ascii=False)})

    def _read(self, child: dict[str, Any], data: bytes) -> dict[str, Any]:
        try:
            text = decode_text(data)
        except ledger.Rejected as e:
            return _rejected(child, e.reason, e.detail)
        named = child["language"] or language_of(child["path"], data[:200])
        language, share = confirm_language(child["path"], named, text)
        return {**child, "content": text, "size": len(data), "language": language, "parse_error_share": share,
                "language_confirmed": None if share is None else share <= self.params.confirm_share}


def _rejected(child: dict[str, Any], reason: str, detail: str) -> dict[str, Any]:
    return {**child, "reject": ledger.reject(reason, f"{child['source_uri']}: {detail}")}


def _looks_like_repository(path: str) -> bool:
    return os.path.lexists(os.path.join(path, ".git")) or (
        os.path.isfile(os.path.join(path, "HEAD")) and os.path.isdir(os.path.join(path, "objects")))


PREVIEW_LINES = 14


def code_report(run_root: str, kept) -> list[dict[str, Any]]:
    import html
    from collections import Counter

    from pipeline.report import first_kept

    if kept is None or not kept.num_rows or "language" not in kept.column_names:
        return []
    n = kept.num_rows
    languages = [x or "(unknown)" for x in kept.column("language").to_pylist()]
    kinds = kept.column("kind").to_pylist() if "kind" in kept.column_names else [None] * n
    confirmed = kept.column("language_confirmed").to_pylist() if "language_confirmed" in kept.column_names \
        else [None] * n
    files = Counter(lang for lang, k in zip(languages, kinds) if k in (None, "file"))
    definitions = Counter(lang for lang, k in zip(languages, kinds) if k not in (None, "file"))
    parsed = Counter(lang for lang, k, c in zip(languages, kinds, confirmed) if k in (None, "file") and c is not None)
    agreed = Counter(lang for lang, k, c in zip(languages, kinds, confirmed) if k in (None, "file") and c)
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(lang)}</td><td class='n'>{files[lang]}</td><td class='n'>{definitions[lang]}</td>"
        f"<td class='n'>{f'{agreed[lang]} of {parsed[lang]}' if parsed[lang] else '-'}</td></tr>"
        for lang in sorted(set(files) | set(definitions), key=lambda x: (-files[x] - definitions[x], x)))
    sections = [{"title": "Languages (kept)", "data": {"files": dict(files), "definitions": dict(definitions)},
                 "html": "<table id='languages'><tr><th>language</th><th>files</th><th>functions, methods, classes"
                         "</th><th>files the grammar confirms</th></tr>" + rows + "</table>"}]
    previews = []
    columns = ["repo", "path", "kind", "name", "language", "license", "code", "content", "docstring"]
    picked = first_kept(run_root, columns, 2000)
    # a few files and a few documented definitions, not 12 methods of one class
    shown = [r for r in picked if r.get("kind") not in (None, "file") and r.get("docstring")][:6]
    shown = [r for r in picked if r.get("kind") in (None, "file")][:12 - len(shown)] + shown
    for r in shown:
        text = r.get("code") if r.get("code") is not None else r.get("content") or ""
        lines = text.splitlines()
        more = f"\n... ({len(lines) - PREVIEW_LINES} more lines)" if len(lines) > PREVIEW_LINES else ""
        what = r.get("path") if r.get("kind") in (None, "file") else f"{r.get('kind')} {r.get('name')} in {r.get('path')}"
        head = f"{os.path.basename(str(r.get('repo') or ''))}: {what} ({r.get('language') or '?'}" + \
            (f", {r['license']})" if r.get("license") else ")")
        previews.append(f"<div class='code'><b>{e(head)}</b><pre>{e(chr(10).join(lines[:PREVIEW_LINES]) + more)}"
                        "</pre></div>")
    if previews:
        sections.append({"title": f"Code: {len(previews)} kept files and documented definitions",
                         "html": "<style>.code pre{background:#f6f7fa;padding:6px 8px;font-size:12px;overflow:auto;"
                                 "max-height:260px}</style>" + "".join(previews)})
    return sections
