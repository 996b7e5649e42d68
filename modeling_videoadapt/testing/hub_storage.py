"""In-memory, git-like storage behind `FakeHub`: repositories, immutable commits, branches, tags, and Hub errors.

A commit is an immutable snapshot `{path: bytes}` with a parent. Branches move with each commit, tags never move,
and every commit stays readable by its 40-hex sha. A new repository gets an "initial commit" holding a
`.gitattributes`, as on the real Hub. Failures raise `HubError`, which carries the HTTP status and the
`X-Error-Code` that huggingface_hub maps to its exceptions (`RepoNotFound` -> RepositoryNotFoundError,
`RevisionNotFound` -> RevisionNotFoundError, `EntryNotFound` -> RemoteEntryNotFoundError).

Shape legend: none (no tensors); sizes are byte counts, shas are 40 lowercase hex characters.
"""

import hashlib
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


__all__ = ["GITATTRIBUTES", "Commit", "HubError", "HubStorage", "Repo", "git_blob_sha", "tree_entries"]

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
_SHA = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """A Hub API failure: `status` (HTTP), `code` (the `X-Error-Code` header, or None), extra response headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as `oid`/`blobId` and as the ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    """UTC time in the Hub's format, which `huggingface_hub.utils.parse_datetime` reads."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class Commit:
    """One immutable snapshot of a repository."""

    sha: str
    parent: str | None
    files: Mapping[str, bytes]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    """A repository: its commits by sha, and the branch and tag names pointing at them."""

    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """The commit a branch name, a tag name or a full commit sha designates (404 RevisionNotFound if none)."""
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and _SHA.match(revision) and revision in self.commits:
            sha = revision
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return self.commits[sha]

    def history(self, revision: str) -> list[Commit]:
        """The commits reachable from `revision`, newest first."""
        commit, out = self.resolve(revision), []
        while commit is not None:
            out.append(commit)
            commit = self.commits.get(commit.parent) if commit.parent else None
        return out

    def create_branch(self, name: str, starting_point: str | None) -> None:
        if name in self.branches or name in self.tags:
            raise HubError(409, None, f"Reference already exists: refs/heads/{name}")
        self.branches[name] = self.resolve(starting_point or "main").sha

    def create_tag(self, name: str, revision: str) -> None:
        if name in self.tags or name in self.branches:
            raise HubError(409, None, f"Reference already exists: refs/tags/{name}")
        self.tags[name] = self.resolve(revision).sha

    def delete_ref(self, refs: dict[str, str], name: str) -> None:
        if name not in refs or (name == "main" and refs is self.branches):
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {name}")
        del refs[name]


def _apply_operations(
    files: Mapping[str, bytes],
    additions: Mapping[str, bytes],
    deleted_files: Iterable[str],
    deleted_folders: Iterable[str],
) -> dict[str, bytes]:
    """The snapshot after deleting files/folders (404 EntryNotFound when one does not exist), then adding."""
    out = dict(files)
    for path in deleted_files:
        if out.pop(path, None) is None:
            raise HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
    for folder in deleted_folders:
        prefix = folder.strip("/") + "/"
        inside = [path for path in out if path.startswith(prefix)]
        if not inside:
            raise HubError(404, "EntryNotFound", f"A folder with this name doesn't exist: {folder}")
        for path in inside:
            del out[path]
    out.update(additions)
    return out


class HubStorage:
    """All repositories of one fake Hub. Callers hold `lock` around any read-modify-write sequence."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}  # (repo_type, repo_id) -> Repo
        self._counter = 0  # makes every commit sha unique, even for identical content and parent

    def get(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        if (repo_type, repo_id) in self.repos:
            raise HubError(409, None, f"You already created this {repo_type} repo")
        repo = self.repos[(repo_type, repo_id)] = Repo(repo_type, repo_id, private)
        repo.branches["main"] = self._new_commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit", "")
        return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        self.get(repo_type, repo_id)
        del self.repos[(repo_type, repo_id)]

    def commit(
        self,
        repo: Repo,
        branch: str,
        additions: Mapping[str, bytes],
        *,
        deleted_files: Iterable[str] = (),
        deleted_folders: Iterable[str] = (),
        title: str = "",
        message: str = "",
        parent_commit: str | None = None,
    ) -> str:
        """Commit onto `branch` (which must exist) and move it; returns the new commit sha."""
        if branch not in repo.branches:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch} (commits go to an existing branch)")
        head = repo.commits[repo.branches[branch]]
        if parent_commit is not None and parent_commit != head.sha:
            raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
        files = _apply_operations(head.files, additions, deleted_files, deleted_folders)
        repo.branches[branch] = self._new_commit(repo, head.sha, files, title, message)
        return repo.branches[branch]

    def _new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], title: str, message: str) -> str:
        self._counter += 1
        digest = hashlib.sha1(f"{parent}\n{self._counter}\n{title}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, MappingProxyType(dict(files)), title, message, _now())
        repo.commits[commit.sha] = commit
        return commit.sha


def _directories(files: Iterable[str]) -> set[str]:
    return {path.rsplit("/", i)[0] for path in files for i in range(1, path.count("/") + 1)}


def tree_entries(files: Mapping[str, bytes], path: str, recursive: bool) -> list[dict]:
    """`/tree` listing under folder `path` ("" = root), as the Hub answers it (404 EntryNotFound if no such folder)."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    folders = _directories(files)
    if prefix and prefix[:-1] not in folders:
        raise HubError(404, "EntryNotFound", f"{path} does not exist on this revision")

    def wanted(name: str) -> bool:
        return name.startswith(prefix) and (recursive or "/" not in name[len(prefix) :])

    entries = [
        {"type": "directory", "oid": hashlib.sha1(name.encode()).hexdigest(), "size": 0, "path": name}
        for name in sorted(folders)
        if wanted(name)
    ]
    entries += [
        {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": name}
        for name, data in sorted(files.items())
        if wanted(name)
    ]
    return entries
