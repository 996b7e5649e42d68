"""`make demo`: a PAVE audio patch teaches a pre-trained video LLM to answer a question only the audio can answer.

    python -m videoadapt.recipes.demo --out demo_out
    python -m videoadapt.recipes.demo --out demo_gpu --base <LLaVA-OneVision checkpoint> --audio-encoder <Whisper>

1. Writes a synthetic audio-visual QA set of real mp4 files (H.264 + AAC): each plays one of four tones whose pitch
   signals a colour (the answer); the picture (background colour, circles) is drawn independently of it.
2. Builds a tiny random LLaVA-OneVision and pre-trains it on video-only QA about the picture, on silent videos
   (`--base` instead takes any LLaVA-OneVision checkpoint as it is).
3. Extracts audio features offline (a tiny random Whisper encoder, cached), then, with the same data, steps and
   LoRA learning rate, trains (a) LoRA on the LLM without audio and (b) a PAVE audio patch + LoRA, both with
   `transformers.Trainer`, and scores greedy answers with the shipped `Accuracy` metric.
4. Saves the patch, loads a fresh base with `from_pretrained`, loads the patch onto it and scores it again.
5. Logs a table, saves a PNG of the patch's cross-attention for one test example and prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging as std_logging
import sys
import time
from pathlib import Path

import torch
from transformers.utils import logging

from videoadapt.modeling_pave import PaveForConditionalGeneration
from videoadapt.pave_patches import default_lora_config
from videoadapt.processors.side_channels import AudioSideChannel
from videoadapt.processors.video_io import load_video
from videoadapt.recipes import pave_demo_data as data
from videoadapt.recipes.pave_demo_plot import attention_heatmap, capture_attention
from videoadapt.recipes.pave_demo_train import (
    BaseSizes,
    TrainConfig,
    build_audio_encoder,
    evaluate_accuracy,
    load_audio_encoder,
    make_collator,
    pretrain_base,
    train,
)


__all__ = ["DemoConfig", "main", "run_demo"]

logger = logging.get_logger(__name__)
PATCH = "audio"
# the tiny base gets a patch to its size; a real base (`--base`) the paper's (512 wide, 4 heads, 2 layers, 1024)
TINY_PATCH = dict(hidden_size=64, num_attention_heads=4, ffn_size=128, output_mlp_size=128)


@dataclasses.dataclass
class DemoConfig:
    """Everything the demo's numbers depend on; `DemoConfig()` is `make demo`, `DemoConfig(quick=True)` the tests'."""

    quick: bool = False
    seed: int = 0
    num_frames: int = 4
    base: BaseSizes = BaseSizes()
    dataset: data.DataConfig | None = None
    pretrain: TrainConfig | None = None
    finetune: TrainConfig | None = None

    def __post_init__(self):
        seed, quick = self.seed, self.quick
        if self.dataset is None:
            sizes = dict(num_train=64, num_test=32, num_pretrain=200, duration=3.0) if quick else {}
            self.dataset = data.DataConfig(seed=seed, **sizes)
        if self.pretrain is None:
            self.pretrain = TrainConfig(250 if quick else 600, 16, 2e-3, warmup_steps=20, seed=seed)
        if self.finetune is None:  # (a) and (b) share it; the LoRA rate is `learning_rate`
            self.finetune = TrainConfig(150 if quick else 500, 16, learning_rate=2e-4, patch_learning_rate=1e-2,
                                        warmup_steps=20, seed=seed, scheduler="constant_with_warmup")  # fmt: skip


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


@contextlib.contextmanager
def _quiet_transformers():
    """Loading a base checkpoint into the PAVE class is the intended use; hide transformers' model-type warning."""
    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def run_demo(
    out: Path,
    config: DemoConfig,
    base: str | None = None,
    audio_encoder: str | None = None,
    workers: int = 2,
    threads: int | None = 1,
) -> dict:
    """The whole demo; returns the JSON line's figures. `threads`: torch CPU threads while it runs (restored)."""
    previous_threads = torch.get_num_threads()
    if threads and not torch.cuda.is_available():
        torch.set_num_threads(threads)  # tiny tensors: OpenMP hand-offs between threads cost more than they save
    try:
        return _run(Path(out), config, base, audio_encoder, workers)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out: Path, config: DemoConfig, base: str | None, audio_encoder: str | None, workers: int) -> dict:
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    timings, laps = {}, [start]

    def lap(name: str) -> None:
        laps.append(time.perf_counter())
        timings[name] = round(laps[-1] - laps[-2], 1)

    rows = data.make_dataset(config.dataset, out / "data", workers=workers)
    frames = data.decode_frames(rows, config.num_frames)
    logger.info(f"data: {len(rows)} mp4 files in {out / 'data'} ({config.dataset})")
    lap("data")

    if base is None:
        pretrain_rows = data.qa_rows(rows, "pretrain", "visual")
        base = str(pretrain_base(out / "base", pretrain_rows, frames, config.pretrain, config.num_frames, config.base))
        logger.info(f"base: tiny LLaVA-OneVision pre-trained on {len(pretrain_rows)} video-only QA pairs -> {base}")
    lap("base")

    encoder_path = audio_encoder or build_audio_encoder(out / "audio_encoder", config.seed)
    encoder, feature_extractor = load_audio_encoder(encoder_path)
    extractor = AudioSideChannel(encoder.to(device), feature_extractor)
    audio = data.load_audio_features([r for r in rows if r["split"] != "pretrain"], extractor, out / "features")
    side_dim = next(iter(audio.values())).shape[-1]
    lap("audio features")

    train_rows, test_rows = data.qa_rows(rows, "train", "audio"), data.qa_rows(rows, "test", "audio")
    plain_eval = make_collator(base, frames, train=False, num_frames=config.num_frames)
    side = {PATCH: audio}
    results, params = {}, {}

    def fresh():
        with _quiet_transformers():
            return PaveForConditionalGeneration.from_pretrained(base).to(device)

    model = fresh()
    params["base"] = _count(model.parameters())
    results["base, visual QA"] = evaluate_accuracy(model, data.qa_rows(rows, "test", "visual"), plain_eval)[0]
    results["base zero-shot"] = evaluate_accuracy(model, test_rows, plain_eval)[0]
    lap("base eval")

    torch.manual_seed(config.seed)  # (a) LoRA on the LLM, no audio
    model = fresh()
    model.add_adapter(default_lora_config(), adapter_name="video_only")
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(".lora_" in name)
    params["LoRA, video only"] = _count(p for p in model.parameters() if p.requires_grad)
    collator = make_collator(base, frames, num_frames=config.num_frames)
    train(model, train_rows, collator, config.finetune, out / ".trainer_lora", "LoRA, video only")
    results["LoRA, video only"] = evaluate_accuracy(model, test_rows, plain_eval)[0]
    lap("LoRA video-only")

    torch.manual_seed(config.seed)  # (b) PAVE audio patch + LoRA
    model = fresh()
    patch_sizes = TINY_PATCH if base == str(out / "base") else {}
    model.add_patch(PATCH, model.patch_config_for("audio", side_dim, **patch_sizes), default_lora_config())
    model.train_patch(PATCH)
    params["PAVE audio patch + LoRA"] = _count(model.patch_parameters(PATCH))
    collator = make_collator(base, frames, side, num_frames=config.num_frames)
    pave_eval = make_collator(base, frames, side, train=False, num_frames=config.num_frames)
    train(model, train_rows, collator, config.finetune, out / ".trainer_pave", "PAVE audio patch")
    results["PAVE audio patch + LoRA"], predictions = evaluate_accuracy(model, test_rows, pave_eval)
    patch_dir = model.save_patch(PATCH, out / "audio_patch")
    _save_attention_png(model, pave_eval, test_rows[0], config.num_frames, out / "pave_attention.png")
    lap("PAVE")

    model = fresh()  # a fresh base from disk, then the patch folder
    model.load_patch(patch_dir, name=PATCH)
    results["fresh base + loaded patch"], reloaded_predictions = evaluate_accuracy(model, test_rows, pave_eval)
    lap("reload")

    patch_bytes = sum(f.stat().st_size for f in patch_dir.iterdir() if f.is_file())
    summary = {
        "base_zero_shot_acc": results["base zero-shot"],
        "lora_video_only_acc": results["LoRA, video only"],
        "pave_acc": results["PAVE audio patch + LoRA"],
        "reloaded_acc": results["fresh base + loaded patch"],
        "patch_params": params["PAVE audio patch + LoRA"],
        "base_params": params["base"],
        "patch_bytes": patch_bytes,
    }
    _log_table(results, params, patch_bytes, len(train_rows), len(test_rows), config)
    total = round(time.perf_counter() - start, 1)
    details = {**summary, "base_visual_acc": results["base, visual QA"], "lora_params": params["LoRA, video only"],
               "same_predictions_after_reload": predictions == reloaded_predictions, "timings_s": timings,
               "total_s": total, "base": base, "patch_dir": str(patch_dir)}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(details, indent=2) + "\n")
    logger.info(f"timings (s): {timings}; total {total} s; details in {out / 'summary.json'}")
    return summary


def _save_attention_png(model, collator, row, num_frames: int, path: Path) -> None:
    batch = collator([row])
    batch.pop("answers")
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    batch["side_channels"] = {k: {n: t.to(device) for n, t in v.items()} for k, v in batch["side_channels"].items()}
    maps = capture_attention(model, PATCH, batch)
    times = load_video(row["video"], num_frames=num_frames)[1].timestamps
    rows = [f"frame {i} {s:.1f}s" for i, s in enumerate(times)]
    cols = [f"{k + 1:.0f}s" for k in range(maps[0].shape[1])]  # 2 s clips at 1 s stride: centres at 1, 2, ... s
    title = f"PAVE audio patch: cross-attention, one test video ({Path(row['video']).name}, answer '{row['answer']}')"
    attention_heatmap(maps, rows, cols, title).save(path)
    logger.info(f"cross-attention map -> {path}")


def _log_table(results: dict, params: dict, patch_bytes: int, n_train: int, n_test: int, config: DemoConfig) -> None:
    steps = config.finetune.steps
    logger.info(f"audio QA: {n_train} train / {n_test} test videos, 4 answers (chance 0.25), {steps} steps each")
    logger.info(f"{'model':<28}{'test accuracy':>14}{'trainable params':>18}")
    for name, value in results.items():
        logger.info(f"{name:<28}{value:>14.3f}{params.get(name, ''):>18}")
    logger.info(f"base: {params['base']:,} params; patch: {params['PAVE audio patch + LoRA']:,} params "
                f"(fusion + LoRA), {patch_bytes:,} bytes on disk")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--base", help="a LLaVA-OneVision checkpoint (folder or Hub id) instead of the tiny base")
    parser.add_argument("--audio-encoder", help="a Whisper (or AST, CLAP) checkpoint instead of the tiny encoder")
    parser.add_argument("--num-frames", type=int, default=4)
    parser.add_argument("--steps", type=int, help="fine-tuning steps of (a) and (b)")
    parser.add_argument("--batch-size", type=int, help="fine-tuning batch size")
    parser.add_argument("--lr", type=float, help="LoRA learning rate (a and b)")
    parser.add_argument("--patch-lr", type=float, help="patch (fusion) learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="processes that write the mp4 files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    parser.add_argument("--quick", action="store_true", help="the short version the tests run")
    args = parser.parse_args(argv)
    std_logging.basicConfig(level=std_logging.INFO, format="%(message)s")  # our loggers; transformers keeps its own
    config = DemoConfig(quick=args.quick, seed=args.seed, num_frames=args.num_frames)
    overrides = {"steps": args.steps, "batch_size": args.batch_size, "learning_rate": args.lr,
                 "patch_learning_rate": args.patch_lr}  # fmt: skip
    config.finetune = dataclasses.replace(config.finetune, **{k: v for k, v in overrides.items() if v is not None})
    summary = run_demo(args.out, config, args.base, args.audio_encoder, args.workers, args.threads)
    sys.stdout.write(json.dumps(summary) + "\n")  # the program's result: one JSON line, last


if __name__ == "__main__":
    main()
