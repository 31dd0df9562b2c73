"""fit(): metrics, checkpoints and exact resume on a tiny synthetic problem."""

import json

import pytest
import torch
from torch import nn

from dualprune.data import Loader
from dualprune.errors import CheckpointError
from dualprune.train.config import TrainConfig
from dualprune.train.loop import evaluate, fit, flush_denormals

META = {"model_name": "tiny"}


def _data(n: int = 256):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 100, (n, 1, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, :4, :4] += 150  # class 1 has a bright corner: learnable in a few steps
    return x, y


def _loaders(seed: int = 0):
    x, y = _data()
    train = Loader(
        x, y, batch_size=32, mean=(0.5,), std=(0.25,), shuffle=True, augment=False, seed=seed
    )
    test = Loader(
        x[:64], y[:64], batch_size=64, mean=(0.5,), std=(0.25,), shuffle=False, augment=False
    )
    return train, test


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    )


CFG = TrainConfig(epochs=3, batch_size=32, lr=0.05, schedule="cosine", weight_decay=1e-4)


class Crash(Exception):
    pass


class CrashingLoader:
    """Wraps a loader and raises in the middle of one epoch (a killed process)."""

    def __init__(self, inner, crash_epoch: int):
        self.inner, self.crash_epoch, self.epoch = inner, crash_epoch, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        for i, batch in enumerate(self.inner):
            if self.epoch == self.crash_epoch and i == 3:
                raise Crash
            yield batch


def test_fit_learns_and_writes_metrics_and_checkpoint(tmp_path):
    train, test = _loaders()
    model = _model()
    before = evaluate(model, test)["acc"]
    history = fit(model, train, test, CFG, tmp_path, meta=META, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_acc"] > max(before, 0.8)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2, 3]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    train, test = _loaders()
    reference = _model()
    fit(reference, train, test, CFG, tmp_path / "a", meta=META, progress=False)

    train, test = _loaders()
    interrupted = _model()
    with pytest.raises(Crash):
        fit(
            interrupted,
            CrashingLoader(train, crash_epoch=2),
            test,
            CFG,
            tmp_path / "b",
            meta=META,
            progress=False,
        )
    torch.manual_seed(12345)  # a new process starts with another RNG state
    resumed = _model()
    train, test = _loaders()
    history = fit(resumed, train, test, CFG, tmp_path / "b", meta=META, resume=True, progress=False)
    assert [h["epoch"] for h in history] == [3]
    for (k, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in metrics] == [1, 2, 3]


def test_resume_with_changed_settings_is_refused(tmp_path):
    train, test = _loaders()
    fit(
        _model(),
        train,
        test,
        CFG.model_copy(update={"epochs": 1}),
        tmp_path,
        meta=META,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="'lr' was 0.05, now 0.1"):
        fit(
            _model(),
            train,
            test,
            CFG.model_copy(update={"lr": 0.1}),
            tmp_path,
            meta=META,
            resume=True,
            progress=False,
        )


def test_resume_into_another_model_is_refused(tmp_path):
    train, test = _loaders()
    fit(
        _model(),
        train,
        test,
        CFG.model_copy(update={"epochs": 1}),
        tmp_path,
        meta=META,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="saved from model 'tiny', not 'other'"):
        fit(
            _model(),
            train,
            test,
            CFG,
            tmp_path,
            meta={"model_name": "other"},
            resume=True,
            progress=False,
        )


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["step", "onecycle", "constant"])
def test_optimizers_and_schedules_train(tmp_path, optimizer, schedule):
    train, test = _loaders()
    lr = 0.05 if optimizer == "sgd" else 0.01
    cfg = TrainConfig(
        epochs=2, lr=lr, optimizer=optimizer, schedule=schedule, label_smoothing=0.1, nesterov=True
    )
    history = fit(_model(), train, test, cfg, tmp_path, meta=META, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 1.05
    assert history[-1]["test_acc"] > 0.7


def test_flush_denormals_restores_the_mode():
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0
    with flush_denormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0
