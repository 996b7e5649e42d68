"""bench/hub_roundtrip.py: push a PAVE model, its patch and its remote-code export to the local Hub, load each in a
fresh process (remote code with videoadapt hidden), same logits bit for bit."""

import contextlib
import importlib.util
import io
import json
from pathlib import Path


SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "hub_roundtrip.py"


def test_every_way_of_loading_reproduces_the_pushed_outputs(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_hub_roundtrip", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = bench.main(["--workdir", str(tmp_path)])
    assert json.loads(printed.getvalue().strip().splitlines()[-1]) == result  # the JSON line comes last
    assert result["errors"] == {}
    for key in ("model_outputs_equal", "patch_outputs_equal", "one_line_load", "remote_code_load"):
        assert result[key] is True, key
    assert result["videoadapt_imported_by_remote_code"] == []
    assert result["remote_code_module"].startswith("transformers_modules.tester.")
    patch_files = set(result["repo_files"][bench.PATCH_REPO])
    assert {"config.json", "patch_config.json", "patch.safetensors", "adapter_model.safetensors"} <= patch_files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for files in result["repo_files"].values() for name in files)
