"""SigmaAnnealingCallback: the linear sigma schedule through a real Trainer run, and on wrapped models."""

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerControl, TrainerState, TrainingArguments

from videoadapt.callbacks import SigmaAnnealingCallback, perturbed_topk_modules
from videoadapt.layers.perturbed_topk import PerturbedTopK, extract_from_indicators


class TinySelector(nn.Module):
    """Scores 8 tokens, keeps 3 with a perturbed top-k, regresses a target from them; records sigma at each call."""

    def __init__(self, sigma: float = 0.08):
        super().__init__()
        self.scorer = nn.Linear(4, 1)
        self.topk = PerturbedTopK(3, num_samples=16, sigma=sigma)
        self.head = nn.Linear(4, 1)
        self.sigmas_seen: list[float] = []

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        self.sigmas_seen.append(self.topk.sigma)
        selection = self.topk(self.scorer(tokens).squeeze(-1))  # indicators [B, 3, 8]
        pred = self.head(extract_from_indicators(selection.indicators, tokens)).mean(dim=(1, 2))
        return {"loss": nn.functional.mse_loss(pred, labels)}


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, size: int):
        gen = torch.Generator().manual_seed(0)
        self.items = [{"tokens": torch.randn(8, 4, generator=gen), "labels": torch.randn((), generator=gen)}] * size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.items[i]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_run_follows_linear_schedule(tmp_path, accumulation):
    model = TinySelector(sigma=0.08)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
    )
    scorer_before = model.scorer.weight.detach().clone()
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(40), callbacks=[SigmaAnnealingCallback()])
    trainer.train()
    expected = [0.08 * (1 - step / 5) for step in range(5) for _ in range(accumulation)]
    assert model.sigmas_seen == pytest.approx(expected, abs=1e-12)
    assert model.topk.sigma == 0.0 and model.topk.sigma_max == 0.08
    assert not torch.equal(model.scorer.weight, scorer_before)  # the scorer learns through the perturbed top-k


class NotAModule:
    """A wrapper that is not an nn.Module but holds the model as `.module` (as some engines do)."""

    def __init__(self, module):
        self.module = module


class DDPLike(nn.Module):
    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module


@pytest.mark.parametrize("wrap", [lambda m: m, DDPLike, NotAModule, lambda m: NotAModule(DDPLike(m))])
def test_wrapped_models_and_floor(wrap):
    inner = nn.Sequential(PerturbedTopK(2, sigma=0.1), nn.Sequential(PerturbedTopK(2, sigma=0.04)))
    model = wrap(inner)
    assert perturbed_topk_modules(model) == [inner[0], inner[1][0]]
    args, control = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True), TrainerControl()
    SigmaAnnealingCallback().on_step_begin(args, TrainerState(max_steps=10, global_step=3), control, model=model)
    assert inner[0].sigma == pytest.approx(0.07) and inner[1][0].sigma == pytest.approx(0.028)

    callback = SigmaAnnealingCallback(sigma_max=0.2, final_sigma=0.05)
    callback.on_step_begin(args, TrainerState(max_steps=10, global_step=5), control, model=model)
    assert inner[0].sigma == pytest.approx(0.1) and inner[1][0].sigma == pytest.approx(0.1)
    callback.on_step_begin(args, TrainerState(max_steps=10, global_step=9), control, model=model)
    assert inner[0].sigma == pytest.approx(0.05)  # floor
    callback.on_train_end(args, TrainerState(max_steps=10, global_step=10), control, model=model)
    assert inner[1][0].sigma == pytest.approx(0.05)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="`final_sigma` must be >= 0"):
        SigmaAnnealingCallback(final_sigma=-0.1)
    with pytest.raises(ValueError, match="`sigma_max` must be >= 0"):
        SigmaAnnealingCallback(sigma_max=float("nan"))
