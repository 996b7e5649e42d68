"""The Hub API that `FakeHub` serves: requests routed onto `HubStorage`, answered the way the real Hub answers.

Repository endpoints live under `/api/{models,datasets,spaces}/{namespace}/{name}/...`; downloads under
`/[datasets/|spaces/]{namespace}/{name}/resolve/{revision}/{path}`. Each endpoint is one method of `HubRoutes`
returning a `HubResponse`. A `HubError` becomes the status, `X-Error-Code` and `X-Error-Message` from which
huggingface_hub picks its exception. Preupload always answers `uploadMode: "regular"`, so the client commits every
file inline (base64 in the NDJSON commit) and neither LFS nor Xet is involved.

Shape legend: none (no tensors); sizes are byte counts.
"""

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from typing import Any
from urllib.parse import parse_qs

import yaml

from videoadapt.testing.hub_storage import HubError, HubStorage, Repo, git_blob_sha, tree_entries


__all__ = ["HubRequest", "HubResponse", "HubRoutes", "json_response"]

_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_NOT_FOUND = "Sorry, we can't find the page you are looking for."


@dataclass
class HubRequest:
    """One HTTP request: `segments` are the URL-decoded path segments (an encoded `refs%2Fpr%2F1` stays one)."""

    method: str
    segments: list[str]
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body or b"{}")

    def flag(self, name: str) -> bool:
        return self.query.get(name, ["false"])[0].lower() in ("1", "true")


@dataclass
class HubResponse:
    """Status, body and headers (the server adds `Content-Length`)."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> HubResponse:
    return HubResponse(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})


def _error(err: HubError) -> HubResponse:
    headers = {"X-Error-Message": err.message, **err.headers}
    if err.code is not None:
        headers["X-Error-Code"] = err.code
    return json_response({"error": err.message}, err.status, headers)


def _front_matter_errors(content: str) -> list[dict]:
    """What /api/validate-yaml reports: the YAML block between the leading `---` lines must load as a mapping."""
    if not content.startswith("---"):
        return []
    block = content[3:].split("\n---", 1)[0]
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as err:
        return [{"message": f"Invalid YAML metadata: {err}"}]
    return [] if data is None or isinstance(data, dict) else [{"message": "YAML metadata must be a mapping"}]


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) byte of one `bytes=` range; None when absent or several ranges (the file is served whole)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header[len("bytes=") :].strip().partition("-")
    if not first:  # suffix range: the last `last` bytes
        return (max(size - int(last), 0), size - 1) if last else None
    return int(first), (min(int(last), size - 1) if last else size - 1)


class HubRoutes:
    """The Hub API over `storage`; `endpoint()` is the server's base URL (repo and commit URLs must use its host)."""

    def __init__(self, storage: HubStorage, *, user: str, token: str, endpoint: Callable[[], str]) -> None:
        self.storage, self.user, self.token, self.endpoint = storage, user, token, endpoint

    def handle(self, req: HubRequest) -> HubResponse:
        try:
            with self.storage.lock:
                return self._dispatch(req)
        except HubError as err:
            return _error(err)

    def _dispatch(self, req: HubRequest) -> HubResponse:
        match (req.method, req.segments):
            case ("GET", ["api", "whoami-v2"]):
                self._require_token(req)
                return json_response({"type": "user", "id": "fakehub-user", "name": self.user, "fullname": self.user})
            case ("POST", ["api", "validate-yaml"]):
                errors = _front_matter_errors(req.json().get("content", ""))
                return json_response({"errors": errors, "warnings": []}, 400 if errors else 200)
            case ("POST", ["api", "repos", "create"]):
                return self._create_repo(req)
            case ("DELETE", ["api", "repos", "delete"]):
                self._require_token(req)
                payload = req.json()
                self.storage.delete_repo(payload.get("type") or "model", self._repo_id(payload))
                return json_response({})
            case (_, ["api", kind, namespace, name, *rest]) if kind in _KINDS:
                return self._repo_api(req, self._repo(req, _KINDS[kind], f"{namespace}/{name}"), rest)
            case (_, ["api", kind, _]) if kind in _KINDS:  # a repo id without namespace: never created here
                raise HubError(404, "RepoNotFound", "Repository not found")
            case ("GET" | "HEAD", _) if "resolve" in req.segments[1:4]:
                return self._resolve(req)
        return json_response({"error": _NOT_FOUND}, 404)

    def _require_token(self, req: HubRequest) -> None:
        if req.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(401, None, "Invalid credentials in Authorization header")

    def _repo_id(self, payload: Mapping[str, Any]) -> str:
        return f"{payload.get('organization') or self.user}/{payload['name']}"

    def _repo(self, req: HubRequest, repo_type: str, repo_id: str) -> Repo:
        repo = self.storage.get(repo_type, repo_id)
        if repo.private and req.headers.get("Authorization") != f"Bearer {self.token}":
            raise HubError(404, "RepoNotFound", "Repository not found")
        return repo

    def _url(self, repo_type: str, repo_id: str, suffix: str = "") -> str:
        return f"{self.endpoint()}/{_URL_PREFIX[repo_type]}{repo_id}{suffix}"

    def _create_repo(self, req: HubRequest) -> HubResponse:
        self._require_token(req)
        payload = req.json()
        repo_type, repo_id = payload.get("type") or "model", self._repo_id(payload)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = self._url(repo_type, repo_id)
        try:
            self.storage.create_repo(repo_type, repo_id, private)
        except HubError as err:  # 409: the client's `exist_ok=True` accepts it
            return json_response({"error": err.message, "url": url}, err.status)
        return json_response({"url": url, "name": repo_id, "id": repo_id})

    def _repo_api(self, req: HubRequest, repo: Repo, rest: list[str]) -> HubResponse:
        match (req.method, rest):
            case ("GET", []):
                return self._info(repo, "main")
            case ("GET", ["revision", revision]):
                return self._info(repo, revision)
            case ("GET", ["tree", revision, *path]):
                return json_response(tree_entries(repo.resolve(revision).files, "/".join(path), req.flag("recursive")))
            case ("POST", ["paths-info", revision]):
                listed = {entry["path"]: entry for entry in tree_entries(repo.resolve(revision).files, "", True)}
                return json_response(
                    [listed[path] for path in parse_qs(req.body.decode()).get("paths", []) if path in listed]
                )
            case ("GET", ["refs"]):
                return self._refs(repo)
            case ("GET", ["commits", revision]):
                return self._commits(repo, revision)
            case ("POST", ["preupload", revision]):
                self._require_token(req)
                return self._preupload(req, repo, revision)
            case ("POST", ["commit", branch]):
                self._require_token(req)
                return self._commit(req, repo, branch)
            case ("POST", ["branch", branch]):
                self._require_token(req)
                repo.create_branch(branch, req.json().get("startingPoint"))
                return json_response({})
            case ("POST", ["tag", revision]):
                self._require_token(req)
                repo.create_tag(req.json()["tag"], revision)
                return json_response({})
            case ("DELETE", ["branch" | "tag" as kind, name]):
                self._require_token(req)
                repo.delete_ref(repo.branches if kind == "branch" else repo.tags, name)
                return json_response({})
        return json_response({"error": _NOT_FOUND}, 404)

    def _info(self, repo: Repo, revision: str) -> HubResponse:
        commit = repo.resolve(revision)
        siblings = [
            {"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)} for p, d in sorted(commit.files.items())
        ]
        info = {"_id": repo.repo_id, "id": repo.repo_id, "author": repo.repo_id.split("/")[0], "sha": commit.sha}
        info |= {"private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": []}
        return json_response({**info, "lastModified": commit.date, "createdAt": repo.created_at, "siblings": siblings})

    def _refs(self, repo: Repo) -> HubResponse:
        def refs(names: Mapping[str, str], kind: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": sha} for n, sha in sorted(names.items())]

        payload = {"branches": refs(repo.branches, "heads"), "converts": [], "tags": refs(repo.tags, "tags")}
        return json_response({**payload, "pullRequests": []})

    def _commits(self, repo: Repo, revision: str) -> HubResponse:
        authors = [{"user": self.user}]
        commits = repo.history(revision)
        return json_response(
            [
                {"id": c.sha, "title": c.title, "message": c.message, "date": c.date, "authors": authors}
                for c in commits
            ]
        )

    def _preupload(self, req: HubRequest, repo: Repo, revision: str) -> HubResponse:
        """Every file is "regular"; `oid` (the remote blob sha) lets the client drop unchanged files."""
        commit = repo.resolve(revision)
        answers = []
        for item in req.json()["files"]:
            remote = commit.files.get(item["path"])
            oid = git_blob_sha(remote) if remote is not None else None
            answers.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        return json_response({"files": answers, "commitOid": commit.sha})

    def _commit(self, req: HubRequest, repo: Repo, branch: str) -> HubResponse:
        """NDJSON: a `header` line, then `file` (base64), `deletedFile` and `deletedFolder` lines."""
        if req.flag("create_pr"):
            raise HubError(400, None, "FakeHub does not support pull requests (create_pr=True).")
        header: dict = {}
        additions: dict[str, bytes] = {}
        deleted: dict[str, list[str]] = {"deletedFile": [], "deletedFolder": []}
        for line in filter(None, (raw.strip() for raw in req.body.splitlines())):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                additions[value["path"]] = base64.b64decode(value["content"])
            elif key in deleted:
                deleted[key].append(value["path"])
            else:
                raise HubError(400, None, f"FakeHub stores regular files only (preupload said 'regular'), got {key}.")
        sha = self.storage.commit(
            repo,
            branch,
            additions,
            deleted_files=deleted["deletedFile"],
            deleted_folders=deleted["deletedFolder"],
            title=header.get("summary", ""),
            message=header.get("description", ""),
            parent_commit=header.get("parentCommit"),
        )
        url = self._url(repo.repo_type, repo.repo_id, f"/commit/{sha}")
        return json_response(
            {"success": True, "commitOid": sha, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None}
        )

    def _resolve(self, req: HubRequest) -> HubResponse:
        """HEAD/GET a file at a revision: X-Repo-Commit, ETag (git blob sha), Content-Length, single `Range`s."""
        segments = list(req.segments)
        repo_type = _KINDS[segments.pop(0)] if segments[0] in ("datasets", "spaces") else "model"
        cut = segments.index("resolve")
        repo = self._repo(req, repo_type, "/".join(segments[:cut]))
        if len(segments) < cut + 3:
            raise HubError(404, "EntryNotFound", "Entry not found")
        commit = repo.resolve(segments[cut + 1])
        path = "/".join(segments[cut + 2 :])
        if path not in commit.files:
            raise HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit.sha})
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(data)}"', "Accept-Ranges": "bytes"}
        headers["Content-Type"] = "application/octet-stream"
        span = _byte_range(req.headers.get("Range"), len(data)) if req.method == "GET" else None
        if span is None:
            return HubResponse(200, data, headers)
        if span[0] >= len(data) or span[0] > span[1]:
            return HubResponse(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{len(data)}"
        return HubResponse(206, data[span[0] : span[1] + 1], headers)
