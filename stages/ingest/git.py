"""Reading a git repository without trusting it.

Files come from git's object database at one commit (`ls-tree` for the tree, `cat-file
--batch` for the blobs), never from a working tree: ignored and untracked files never
appear, nothing is checked out, and the commands used run no hook, filter, fsmonitor
or pager. Git is called with the repository named explicitly (`--git-dir`, no
discovery: a folder inside another repository is not that repository), without system
or global configuration, with hooks, fsmonitor and file-protocol transport switched
off on the command line (which overrides the repository's own `.git/config`), with an
empty HOME, and with every call time-limited and its output bounded. A repository that
would make git read outside itself is refused: a `.git` file pointing elsewhere, or
object alternates.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterator

from pipeline.ledger import Rejected

from .programs import last_line, run

# Overrides on every call: they win over anything the repository's own config says.
SAFE_CONFIG = ["-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false", "-c", "protocol.file.allow=never",
               "-c", "submodule.recurse=false", "-c", "core.pager=cat", "-c", "safe.directory=*",
               "-c", "core.untrackedCache=false", "-c", "gc.auto=0", "-c", "maintenance.auto=false"]
TREE_CAP = 256 << 20  # bytes of ls-tree output (about two million paths)


@dataclass
class Entry:
    """One path of a tree: mode, type (blob or commit: a submodule), object id, size."""

    mode: str
    kind: str
    sha: str
    size: int | None
    path: str

    @property
    def symlink(self) -> bool:
        return self.mode == "120000"

    @property
    def submodule(self) -> bool:
        return self.kind == "commit"


def git_env(home: str) -> dict[str, str]:
    """An environment in which git reads no configuration but the repository's own (and
    the -c overrides), asks no questions and has no home to read from."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull, "GIT_ATTR_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0",
            "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false", "GIT_PAGER": "cat", "LC_ALL": "C",
            "GIT_OPTIONAL_LOCKS": "0"}


def git_dir_of(path: str) -> str:
    """The git directory of a repository folder (its `.git`) or of a bare repository,
    found without git's discovery. Raises Rejected when it is neither, or when it would
    make git read outside it."""
    dot_git = os.path.join(path, ".git")
    if os.path.islink(dot_git):
        raise Rejected("unsafe_repository", ".git is a symbolic link")
    if os.path.isfile(dot_git):
        raise Rejected("unsafe_repository", ".git is a file pointing elsewhere (a worktree or submodule checkout); "
                                            "ingest the repository it points to")
    git_dir = dot_git if os.path.isdir(dot_git) else path
    if not (os.path.isfile(os.path.join(git_dir, "HEAD")) and os.path.isdir(os.path.join(git_dir, "objects"))):
        raise Rejected("not_a_repository", "no .git folder, and not a bare repository")
    alternates = os.path.join(git_dir, "objects", "info", "alternates")
    if os.path.exists(alternates) or os.path.exists(os.path.join(git_dir, "objects", "info", "http-alternates")):
        raise Rejected("unsafe_repository", "objects/info/alternates would make git read another object store")
    return os.path.realpath(git_dir)


class Repository:
    """One repository, read through git plumbing only."""

    def __init__(self, path: str, timeout: float = 600.0):
        self.path = os.path.realpath(path)
        self.git_dir = git_dir_of(self.path)
        self.timeout = timeout
        self._home = tempfile.mkdtemp(prefix="mmcurate-git-home-")
        self.env = git_env(self._home)

    def close(self) -> None:
        os.rmdir(self._home)

    def __enter__(self) -> "Repository":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _args(self, *args: str) -> list[str]:
        return ["git", "--git-dir", self.git_dir, "--no-replace-objects", *SAFE_CONFIG, *args]

    def git(self, *args: str, cap: int = 1 << 20) -> bytes:
        code, out, err = run(self._args(*args), self.timeout, "git_timeout", cap=cap, env=self.env, cwd=self.git_dir)
        if code != 0:
            raise Rejected("git_error", f"git {args[0]}: {last_line(err)}")
        return out

    def commit(self, ref: str = "HEAD") -> str:
        """The commit a ref names (a branch, tag, sha or HEAD)."""
        if ref.startswith("-"):
            raise Rejected("bad_ref", f"{ref[:100]!r} is not a ref")
        try:
            return self.git("rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}").decode().strip()
        except Rejected:
            raise Rejected("bad_ref", f"{ref[:100]!r} names no commit here") from None

    def tree(self, commit: str) -> list[Entry]:
        """Every path of the commit's tree, with its size, from ls-tree (nothing read)."""
        out = self.git("ls-tree", "-r", "-z", "--full-tree", "--long", commit, cap=TREE_CAP)
        entries = []
        for record in out.split(b"\0"):
            if not record:
                continue
            head, _, path = record.partition(b"\t")
            mode, kind, sha, size = head.decode().split()
            entries.append(Entry(mode, kind, sha, None if size == "-" else int(size),
                                 path.decode("utf-8", "surrogateescape")))
        return entries

    def blobs(self, shas: list[str], deadline: float | None = None) -> Iterator[tuple[str, bytes]]:
        """(sha, bytes) of each blob, from one `cat-file --batch` process, one at a time
        (its size is known from the tree, so no read is unbounded); killed at the deadline."""
        process = subprocess.Popen(self._args("cat-file", "--batch"), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, env=self.env, cwd=self.git_dir)
        end = deadline or time.monotonic() + self.timeout
        timer = threading.Timer(max(0.0, end - time.monotonic()), process.kill)
        timer.start()
        try:
            for sha in shas:
                process.stdin.write(f"{sha}\n".encode())
                process.stdin.flush()
                header = process.stdout.readline().split()
                if len(header) != 3:
                    if time.monotonic() >= end:
                        raise Rejected("git_timeout", f"reading blobs took more than {self.timeout:g}s")
                    raise Rejected("git_error", f"cat-file answered {b' '.join(header)[:100]!r} for {sha}")
                size = int(header[2])
                data = process.stdout.read(size)
                process.stdout.read(1)  # the newline after each object
                yield sha, data
        finally:
            timer.cancel()
            process.kill()
            process.wait()


def clone(url: str, into: str, ref: str, timeout: float, max_bytes: int, allow_private_networks: bool) -> str:
    """A shallow, bare clone of a remote repository (https, http or git protocol only), with
    a time limit and a byte cap on what it writes; returns the clone's path. Nothing is
    checked out and no hook can run (a bare clone has no working tree)."""
    import shutil
    import socket
    from urllib.parse import urlsplit

    from .download import blocked

    parts = urlsplit(url)
    if parts.scheme not in ("https", "http", "git") or not parts.hostname:
        raise Rejected("unsupported_url", f"only https, http and git URLs are cloned (got {parts.scheme or 'none'}:)")
    if not allow_private_networks:
        try:
            addresses = {info[4][0] for info in socket.getaddrinfo(parts.hostname, parts.port or 443)}
        except OSError as e:
            raise Rejected("clone_failed", f"cannot resolve {parts.hostname}: {e}") from None
        if any(blocked(a) for a in addresses):
            raise Rejected("blocked_address", f"{parts.hostname} resolves to a private or loopback address "
                                              "(allow_private_networks: true clones from those)")
    home = tempfile.mkdtemp(prefix="mmcurate-git-home-")
    target = os.path.join(into, "clone.git")
    args = ["git", *SAFE_CONFIG, "-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
            "-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always", "-c", "http.followRedirects=false",
            "clone", "--bare", "--depth", "1", "--no-tags", "--single-branch", "--quiet"]
    if ref != "HEAD":
        args += ["--branch", ref]
    args += ["--", url, target]
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env=git_env(home), cwd=into)
    end = time.monotonic() + timeout
    try:
        while process.poll() is None:
            if time.monotonic() > end:
                raise Rejected("clone_timeout", f"the clone took more than {timeout:g}s")
            if _size(target) > max_bytes:
                raise Rejected("too_large", f"the clone passed max_bytes={max_bytes}")
            time.sleep(0.05)
        err = process.stderr.read(1 << 14).decode("utf-8", "replace")
        if process.returncode != 0:
            raise Rejected("clone_failed", f"git clone: {last_line(err)}")
        if _size(target) > max_bytes:
            raise Rejected("too_large", f"the clone passed max_bytes={max_bytes}")
        return target
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(home, ignore_errors=True)


def _size(path: str) -> int:
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total
