"""Trainer callbacks.

`SigmaAnnealingCallback`: the linear noise decay of the perturbed top-k used by STTS (`update_sigma`: sigma =
sigma_max * (1 - cur_step / total_steps), every iteration) and Google's patch selection
(`linear_decrease_perturbed_sigma`), applied to every `PerturbedTopK` of the model.
"""

from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from videoadapt.layers.perturbed_topk import PerturbedTopK


__all__ = ["SigmaAnnealingCallback", "perturbed_topk_modules"]

logger = logging.get_logger(__name__)


def perturbed_topk_modules(model: object) -> list[PerturbedTopK]:
    """Every `PerturbedTopK` in `model`, looking through wrappers that hold the model as `.module` (DDP, DeepSpeed,
    accelerate) even when the wrapper itself is not an `nn.Module`."""
    while not isinstance(model, nn.Module) and hasattr(model, "module"):
        model = model.module
    if not isinstance(model, nn.Module):
        return []
    return [module for module in model.modules() if isinstance(module, PerturbedTopK)]


class SigmaAnnealingCallback(TrainerCallback):
    """Linearly anneals `sigma` of every `PerturbedTopK` in the model from sigma_max to 0 over training.

    At optimizer step s (`state.global_step`, 0-based, of `state.max_steps`) the modules use
    sigma = max(final_sigma, sigma_max * (1 - s / max_steps)). It is set on `on_train_begin` and `on_step_begin`
    (once per optimizer step, so every micro-batch of a gradient-accumulation step uses the same sigma), and set to
    the end value max(final_sigma, 0) on `on_train_end`.

    Args:
        sigma_max: the starting value; None uses each module's own `sigma_max` (the sigma it was built with).
        final_sigma: a floor under the schedule (default 0: the last steps approach the hard top-k).
    """

    def __init__(self, sigma_max: float | None = None, final_sigma: float = 0.0) -> None:
        for name, value in (("sigma_max", sigma_max), ("final_sigma", final_sigma)):
            if value is not None and not value >= 0:
                raise ValueError(f"`{name}` must be >= 0, got {value!r}; the noise scale cannot be negative.")
        self.sigma_max = sigma_max
        self.final_sigma = final_sigma

    def sigma_at(self, sigma_max: float, step: int, max_steps: int) -> float:
        """The schedule: max(final_sigma, sigma_max * (1 - step / max_steps)), step clamped to [0, max_steps]."""
        progress = min(max(step / max_steps, 0.0), 1.0) if max_steps > 0 else 1.0
        return max(self.final_sigma, sigma_max * (1.0 - progress))

    def _apply(self, model: object, step: int, max_steps: int) -> None:
        modules = perturbed_topk_modules(model)
        if not modules:
            logger.warning_once("SigmaAnnealingCallback: the model has no PerturbedTopK module; nothing to anneal.")
        for module in modules:
            start = module.sigma_max if self.sigma_max is None else self.sigma_max
            module.sigma = self.sigma_at(start, step, max_steps)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        self._apply(model, state.global_step, state.max_steps)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        self._apply(model, state.global_step, state.max_steps)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        self._apply(model, state.max_steps, state.max_steps)
