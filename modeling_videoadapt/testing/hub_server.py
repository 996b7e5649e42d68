"""A local fake Hugging Face Hub: the real huggingface_hub / transformers / peft clients over real HTTP, on 127.0.0.1.

    with FakeHub() as hub, fake_hub_environment(hub, tmp_path / "hf_home"):
        model.push_to_hub("tester/tiny")                 # create_repo, validate-yaml, preupload, NDJSON commit
        AutoModel.from_pretrained("tester/tiny")         # HEAD/GET /tester/tiny/resolve/main/<file>

    subprocess.run([...], env={**os.environ, **hub.env(tmp_path / "hf_home_2")})   # a fresh interpreter

`FakeHub` is a threaded stdlib HTTP server (`hub_routes` speaks the API, `hub_storage` keeps the repositories in
memory). `fake_hub_environment` points an already-running interpreter at it: it sets the environment AND patches
the values huggingface_hub, transformers and datasets read from it at import time, and restores all on exit.
`fail_next` injects faults; `requests` logs what was served.

Shape legend: none (no tensors); sizes are byte counts.
"""

import contextlib
import fnmatch
import os
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from transformers.utils import logging

from videoadapt.testing.hub_routes import HubRequest, HubResponse, HubRoutes, json_response
from videoadapt.testing.hub_storage import HubStorage


__all__ = ["FakeHub", "fake_hub_environment"]

logger = logging.get_logger(__name__)

_FAULT_MODES = ("status", "truncate")


@dataclass
class _Fault:
    pattern: str
    mode: str
    status: int
    times: int


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, asks the hub for the answer (or an injected fault), writes it, closes the connection."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    hub: "FakeHub"  # set on a per-hub subclass

    def do_GET(self) -> None:
        raw_path, _, query = self.path.partition("?")
        path = unquote(raw_path)
        request = HubRequest(
            method=self.command,
            segments=[unquote(part) for part in raw_path.strip("/").split("/")],
            query=parse_qs(query),
            headers=self.headers,
            body=self._read_body(),
        )
        fault = self.hub._take_fault(f"{self.command} {path}", has_body=self.command != "HEAD")
        if fault is not None and fault.mode == "status":
            response = json_response({"error": f"FakeHub.fail_next injected HTTP {fault.status}"}, fault.status)
        else:
            response = self.hub._routes.handle(request)
        self.hub._log(self.command, path, response.status)  # before answering: the client may assert on it next
        self._write(response, truncate=fault is not None and fault.mode == "truncate")

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _write(self, response: HubResponse, truncate: bool) -> None:
        """Headers carry the full `Content-Length`; with `truncate` only half the body follows before the close."""
        self.close_connection = True
        try:
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body[: len(response.body) // 2] if truncate else response.body)
            if truncate:
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):  # the client went away; nothing to answer
            pass

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("FakeHub: " + format, *args)


class FakeHub:
    """A Hub API server on 127.0.0.1 (a free port), in-memory storage, one thread per connection.

    Use `with FakeHub() as hub:` (or `start()` / `stop()`). Requests that write (create, commit, branch, tag,
    delete) and reads of private repos need `Authorization: Bearer <token>`; repositories without a namespace go
    under `user`.
    """

    def __init__(self, *, user: str = "tester", token: str = "hf_fake") -> None:
        self.user, self.token = user, token
        self.storage = HubStorage()
        self._routes = HubRoutes(self.storage, user=user, token=token, endpoint=lambda: self.endpoint)
        self._faults: list[_Fault] = []
        self._requests: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -----------------------------------------------------------------------------------------------
    def start(self) -> "FakeHub":
        """Bind 127.0.0.1:0 and serve from a daemon thread; returns self."""
        if self._server is None:
            handler = type("FakeHubHandler", (_Handler,), {"hub": self})
            self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port (idempotent); the stored repositories stay readable via `repo_files`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> "FakeHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """`http://127.0.0.1:<port>` (use as HF_ENDPOINT)."""
        if self._server is None:
            raise RuntimeError("This FakeHub is not serving; call `hub.start()` or use `with FakeHub() as hub:`.")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def env(self, hf_home: str | os.PathLike) -> dict[str, str]:
        """Environment variables that make a fresh process (huggingface_hub, transformers, datasets, peft) talk only
        to this hub, with token `token`, no Xet, and every cache under `hf_home`. Merge them over `os.environ`."""
        home = Path(hf_home)
        caches = {"HF_HUB_CACHE": "hub", "HUGGINGFACE_HUB_CACHE": "hub", "HF_ASSETS_CACHE": "assets"}
        caches |= {"HUGGINGFACE_ASSETS_CACHE": "assets", "HF_XET_CACHE": "xet", "HF_MODULES_CACHE": "modules"}
        caches |= {"HF_DATASETS_CACHE": "datasets", "HF_TOKEN_PATH": "token"}
        no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_TOKEN": self.token,
            "HF_HOME": str(home),
            **{name: str(home / folder) for name, folder in caches.items()},
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HUGGINGFACE_CO_STAGING": "0",
            "NO_PROXY": no_proxy,
            "no_proxy": no_proxy,
        }

    # -- test hooks -----------------------------------------------------------------------------------------------
    def fail_next(self, pattern: str, *, mode: str = "status", status: int = 500, times: int = 1) -> None:
        """Fail the next `times` requests whose `"METHOD /decoded/path"` (no query) matches the fnmatch `pattern`.

        mode "status": answer `status` with a JSON error (no `X-Error-Code`). mode "truncate": the normal answer's
        headers (full `Content-Length`) and half its body, then close; HEAD requests never match a "truncate" rule.
        `times=0` cancels the pending rules with this exact `pattern` (`clear_faults` cancels all).

        Mind the client (huggingface_hub 2.4): it retries a 5xx on most API calls and, after one quick try, on the
        download HEAD (waiting 1, 2, 4, 8, 8 s); it never retries a 5xx on the download GET, but retries a cut body 5
        times, 1 s apart (with `Range` only once a whole 10 MB chunk arrived), so making `hf_hub_download` fail with
        "truncate" takes `times >= 6`.
        """
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"`pattern` must be a non-empty fnmatch string like 'GET */resolve/*', got {pattern!r}.")
        if mode not in _FAULT_MODES:
            raise ValueError(f"`mode` must be one of {_FAULT_MODES}, got {mode!r}; pick one of those.")
        if not 400 <= status <= 599:
            raise ValueError(f"`status` must be an HTTP error code in [400, 599], got {status}; use e.g. 500.")
        if times < 0:
            raise ValueError(f"`times` must be >= 0 (requests to fail; 0 cancels `pattern`), got {times}; raise it.")
        with self._lock:
            if times == 0:
                self._faults = [fault for fault in self._faults if fault.pattern != pattern]
            else:
                self._faults.append(_Fault(pattern, mode, status, times))

    def clear_faults(self) -> None:
        """Forget every pending `fail_next` rule."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, key: str, has_body: bool) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fnmatch.fnmatchcase(key, fault.pattern) and (has_body or fault.mode == "status"):
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self._requests.append((method, path, status))

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """(method, URL-decoded path without query, status) of every request served, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def repo_files(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> dict[str, bytes]:
        """Every file of `repo_id` at `revision` (branch, tag or commit sha), read directly from storage."""
        with self.storage.lock:
            repo = self.storage.repos.get((repo_type, repo_id))
            if repo is None:
                known = sorted(name for kind, name in self.storage.repos if kind == repo_type)
                raise ValueError(
                    f"`repo_id` must name a {repo_type} repo of this FakeHub (it has {known}), got {repo_id!r}; "
                    "push to it first or fix the id."
                )
            if revision not in repo.branches and revision not in repo.tags and revision not in repo.commits:
                raise ValueError(
                    f"`revision` must be a branch {sorted(repo.branches)}, a tag {sorted(repo.tags)} or a full commit "
                    f"sha of {repo_id}, got {revision!r}; use one of those."
                )
            return dict(repo.resolve(revision).files)

    def put_files(
        self, repo_id: str, files: Mapping[str, bytes], *, repo_type: str = "model", message: str = "Seed files"
    ) -> str:
        """Commit `files` onto `main` of `repo_id` (created if missing) without HTTP; returns the commit sha."""
        with self.storage.lock:
            repo = self.storage.repos.get((repo_type, repo_id)) or self.storage.create_repo(repo_type, repo_id)
            return self.storage.commit(repo, "main", dict(files), title=message)


def _patches(hub: FakeHub, home: Path) -> list[tuple[object, str, Any]]:
    """(object, attribute, value): what huggingface_hub, transformers and datasets (when already imported) computed
    from the environment at import time, recomputed for `hub` and `home`."""
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api as hf_api

    endpoint, paths = hub.endpoint, {name: str(home / name) for name in ("hub", "assets", "xet", "modules")}
    by_module: dict[str, dict[str, Any]] = {
        "huggingface_hub.constants": {
            "ENDPOINT": endpoint,
            "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
            "HF_HOME": str(home),
            **dict.fromkeys(["default_cache_path", "HUGGINGFACE_HUB_CACHE", "HF_HUB_CACHE"], paths["hub"]),
            **dict.fromkeys(
                ["default_assets_cache_path", "HUGGINGFACE_ASSETS_CACHE", "HF_ASSETS_CACHE"], paths["assets"]
            ),
            **dict.fromkeys(["default_xet_cache_path", "HF_XET_CACHE"], paths["xet"]),
            "HF_TOKEN_PATH": str(home / "token"),
            "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
            "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
            "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
            "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
            "HF_HUB_OFFLINE": False,
            "HF_HUB_DISABLE_TELEMETRY": True,
            "HF_HUB_DISABLE_XET": True,
            "HF_HUB_DISABLE_UPDATE_CHECK": True,
        },
        "huggingface_hub.utils.tqdm": {"HF_HUB_DISABLE_PROGRESS_BARS": True},
        "huggingface_hub.utils._cache_manager": {"HF_HUB_CACHE": paths["hub"]},
        "huggingface_hub.utils._cache_assets": {"HF_ASSETS_CACHE": paths["assets"]},
        # transformers builds its HfApi lazily and keeps it: None makes it build one for this endpoint
        "transformers.utils.hub": {"_hf_api": None, "HF_MODULES_CACHE": paths["modules"]},
        "transformers.file_utils": {"HF_MODULES_CACHE": paths["modules"]},
        "transformers.dynamic_module_utils": {"HF_MODULES_CACHE": paths["modules"]},
        "datasets.config": {
            "HF_ENDPOINT": endpoint,
            "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_HUB_OFFLINE": False,
            "HF_DATASETS_OFFLINE": False,
            "HF_CACHE_HOME": str(home),
            "HF_DATASETS_CACHE": home / "datasets",
            "HF_MODULES_CACHE": home / "modules",
            "DOWNLOADED_DATASETS_PATH": home / "datasets" / "downloads",
            "EXTRACTED_DATASETS_PATH": home / "datasets" / "downloads" / "extracted",
        },
    }
    patches = [
        (sys.modules[name], attr, value)
        for name, values in by_module.items()
        if name in sys.modules
        for attr, value in values.items()
        if hasattr(sys.modules[name], attr)
    ]
    return patches + [(hf_api.api, "endpoint", endpoint)]  # `huggingface_hub.model_info` & co. are its methods


@contextlib.contextmanager
def fake_hub_environment(hub: FakeHub, hf_home: str | os.PathLike) -> Iterator[FakeHub]:
    """Point this interpreter at `hub` with a fresh cache under `hf_home`; everything is restored on exit.

    Sets `hub.env(hf_home)` in `os.environ` and patches the import-time values (huggingface_hub's endpoint, URL
    template, cache and token paths, offline/Xet/telemetry flags, its module-level `HfApi`, transformers' cached
    HfApi and modules cache, datasets' config when imported). `HfApi` objects made before entering keep their old
    endpoint, and modules first imported inside the block (e.g. `datasets`) keep the values they read.
    """
    import huggingface_hub.hf_api  # noqa: F401 (imported before the environment changes, so restoring is exact)
    import huggingface_hub.utils.tqdm  # noqa: F401
    from huggingface_hub.utils._http import close_session

    home = Path(hf_home)
    home.mkdir(parents=True, exist_ok=True)
    environ, patches = hub.env(home), _patches(hub, home)
    saved_environ = {name: os.environ.get(name) for name in environ}
    saved_values = [(target, attr, getattr(target, attr)) for target, attr, _ in patches]
    close_session()  # the shared httpx client reads proxy settings when built
    os.environ.update(environ)
    for target, attr, value in patches:
        setattr(target, attr, value)
    try:
        yield hub
    finally:
        for target, attr, value in reversed(saved_values):
            setattr(target, attr, value)
        for name, value in saved_environ.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        close_session()
