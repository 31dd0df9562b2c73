"""fit(): metrics, checkpoints and exact resume on a tiny synthetic problem."""

import json

import pytest
import torch
from train_helpers import CFG, META, Crash, CrashingLoader, loaders, tiny_model

from dualprune.errors import CheckpointError
from dualprune.train.config import TrainConfig
from dualprune.train.loop import evaluate, fit, flush_denormals


def test_fit_learns_and_writes_metrics_and_checkpoint(tmp_path):
    train, test = loaders()
    model = tiny_model()
    before = evaluate(model, test)["acc"]
    history = fit(model, train, test, CFG, tmp_path, meta=META, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["test_acc"] > max(before, 0.8)
    lines = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2, 3]
    assert (tmp_path / "checkpoint.pt").is_file()


def test_resume_after_crash_is_bitwise_identical(tmp_path):
    train, test = loaders()
    reference = tiny_model()
    fit(reference, train, test, CFG, tmp_path / "a", meta=META, progress=False)

    train, test = loaders()
    interrupted = tiny_model()
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
    resumed = tiny_model()
    train, test = loaders()
    history = fit(resumed, train, test, CFG, tmp_path / "b", meta=META, resume=True, progress=False)
    assert [h["epoch"] for h in history] == [3]
    for (k, a), b in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), k
    metrics = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in metrics] == [1, 2, 3]


def test_resume_with_changed_settings_is_refused(tmp_path):
    train, test = loaders()
    fit(
        tiny_model(),
        train,
        test,
        CFG.model_copy(update={"epochs": 1}),
        tmp_path,
        meta=META,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="'lr' was 0.05, now 0.1"):
        fit(
            tiny_model(),
            train,
            test,
            CFG.model_copy(update={"lr": 0.1}),
            tmp_path,
            meta=META,
            resume=True,
            progress=False,
        )


def test_resume_into_another_model_is_refused(tmp_path):
    train, test = loaders()
    fit(
        tiny_model(),
        train,
        test,
        CFG.model_copy(update={"epochs": 1}),
        tmp_path,
        meta=META,
        progress=False,
    )
    with pytest.raises(CheckpointError, match="saved from model 'tiny', not 'other'"):
        fit(
            tiny_model(),
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
    train, test = loaders()
    lr = 0.05 if optimizer == "sgd" else 0.01
    cfg = TrainConfig(
        epochs=2, lr=lr, optimizer=optimizer, schedule=schedule, label_smoothing=0.1, nesterov=True
    )
    history = fit(tiny_model(), train, test, cfg, tmp_path, meta=META, progress=False)
    assert history[-1]["train_loss"] < history[0]["train_loss"] * 1.05
    assert history[-1]["test_acc"] > 0.7


def test_flush_denormals_restores_the_mode():
    tiny = torch.tensor([1e-39])
    assert (tiny * 1.0).item() != 0.0
    with flush_denormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0
