"""`VideoadaptTrainer`: `transformers.Trainer` with atomic checkpoints and a resume that restores every weight."""

import os
import shutil
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from transformers.utils import logging


__all__ = ["STAGING_PREFIX", "VideoadaptTrainer"]

logger = logging.get_logger(__name__)

STAGING_PREFIX = ".staging-"


class VideoadaptTrainer(Trainer):
    """`Trainer` whose checkpoints appear atomically: written to `<output_dir>/.staging-checkpoint-N/`, then renamed.

    `checkpoint-N` therefore exists only once complete (model, optimizer, scheduler, RNG states, trainer state), and
    `resume_from_checkpoint=True` never picks a half-written one. Older checkpoints rotate after the rename. A resume
    restores every weight (patches and LoRA included) and trains nothing past `max_steps`.
    """

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        """Restore every weight of a checkpoint through the model's own `from_pretrained`.

        Trainer's loader feeds `model.safetensors` to `model.load_state_dict` as saved, but transformers 5 saves
        LLaVA-family weights under their original checkpoint names, so no key matches (transformers#43701), and
        PAVE keeps each patch and its LoRA in `patches/<name>/`, which that loader never reads. FSDP and DeepSpeed
        checkpoints (their own formats) keep the parent's loader.
        """
        if not os.path.isfile(os.path.join(resume_from_checkpoint, TRAINER_STATE_NAME)):  # not a Hub repo id
            raise ValueError(
                f"`resume_from_checkpoint` must be a checkpoint folder written by the Trainer (holding "
                f"{TRAINER_STATE_NAME}), got {os.fspath(resume_from_checkpoint)!r}."
            )
        model = self.model if model is None else model
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        logger.info(f"Loading model from {resume_from_checkpoint}.")
        dtype = next(model.parameters()).dtype
        saved = type(model).from_pretrained(resume_from_checkpoint, dtype=dtype).state_dict()
        model.load_state_dict(saved, strict=True)

    def _load_best_model(self) -> None:
        """`load_best_model_at_end` through the same loader (the parent's has the same key mismatch)."""
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_best_model()
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def _run_epoch(self, *args: Any, **kwargs: Any) -> None:
        """Train nothing once `max_steps` is reached: Trainer checks the step count only after a step, so a run
        resumed from its last checkpoint would otherwise train one step more (and write checkpoint-(N+1))."""
        if self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return
        super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, f"{STAGING_PREFIX}{name}")
        if self.args.should_save:
            shutil.rmtree(staging_root, ignore_errors=True)
        limit = self.args.save_total_limit
        self._get_output_dir = lambda trial=None: staging_root  # the parent writes staging_root/checkpoint-N
        self.args.save_total_limit = None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            del self._get_output_dir
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()
        final = os.path.join(run_dir, name)
        if self.args.should_save:
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(staging_root, name), final)
            shutil.rmtree(staging_root, ignore_errors=True)
        best = self.state.best_model_checkpoint
        if best and best.startswith(staging_root):  # this step is the best: point at its final folder
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(final, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            rotate_checkpoints(
                run_dir, limit, self.state.best_model_checkpoint, checkpoint_prefix=PREFIX_CHECKPOINT_DIR
            )
