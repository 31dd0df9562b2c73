"""The command line end to end on a small budget, and every user error it reports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dualprune.cli import main

QUICK = ["--epochs", "1", "--train-samples", "1024", "--test-samples", "500", "--no-progress"]


def _error(capsys, argv) -> str:
    """Run the CLI expecting a user error; return its single stderr line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_root):
    """A LeNet-5 trained for one quick epoch (shared by the tests below)."""
    out = tmp_path_factory.mktemp("run")
    code = main(
        [
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "mnist",
            "--out",
            str(out),
            "--data-dir",
            str(data_root),
            *QUICK,
        ]
    )
    assert code == 0
    return out


def test_train_writes_a_complete_run(trained, capsys):
    names = {p.name for p in trained.iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl", "done.json"} <= {
        p.name for p in (trained / "pretrain").iterdir()
    }
    assert {
        "pretrain",
        "model.safetensors",
        "recipe.yaml",
        "report.md",
        "report.json",
    } <= names
    report = json.loads((trained / "report.json").read_text())
    assert report["totals"]["weights"] == 430_500
    assert [layer["name"] for layer in report["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert report["layers"][0]["macs"] == 24 * 24 * 500  # conv1: 24×24 positions × 500 weights


def test_eval_reports_accuracy(trained, capsys, data_root):
    assert main(["eval", str(trained), "--data-dir", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "lenet5 (final) on mnist test: accuracy" in out and "conv1" in out
    assert main(["eval", str(trained / "pretrain"), "--data-dir", str(data_root)]) == 0
    assert "lenet5 (epoch 1) on mnist test" in capsys.readouterr().out


def test_run_default_recipe_with_overrides(tmp_path, capsys, data_root):
    tiny = [
        f"{stage}.{key}={value}"
        for stage in ("pretrain", "compress", "retrain")
        for key, value in (("epochs", 1), ("train_samples", 512), ("test_samples", 300))
    ]
    sets = [arg for t in tiny for arg in ("--set", t)]
    code = main(
        ["run", "--out", str(tmp_path), "--data-dir", str(data_root), "--no-progress", *sets]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "fc1" in out and f"report: {tmp_path / 'report.md'}" in out
    assert "hard prune (retrain-free)  test accuracy" in out


def test_resume_of_a_finished_run_only_reports(trained, capsys, data_root):
    code = main(
        [
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "mnist",
            "--out",
            str(trained),
            "--data-dir",
            str(data_root),
            "--resume",
            *QUICK,
        ]
    )
    assert code == 0
    assert "epoch   1/1" not in capsys.readouterr().out


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "resnet56" in out and "torchvision:NAME" in out


def test_help_everywhere(capsys):
    for cmd in ([], ["train"], ["eval"], ["run"], ["report"], ["models"], ["datasets"]):
        assert main([*cmd, "--help"]) == 0
        assert "usage: dualprune" in capsys.readouterr().out


# -- user errors: one line, exit code 2, no traceback -------------------------------------


def test_unknown_model_lists_known(capsys, data_root):
    err = _error(
        capsys,
        ["train", "--model", "lenet6", "--dataset", "mnist", "--data-dir", str(data_root), *QUICK],
    )
    assert "lenet6" in err and "lenet5" in err and "resnet20" in err


def test_unknown_dataset_lists_known(capsys, data_root):
    err = _error(
        capsys,
        ["train", "--model", "lenet5", "--dataset", "mnits", "--data-dir", str(data_root), *QUICK],
    )
    assert "mnits" in err and "fashion_mnist" in err and "cifar10" in err


def test_missing_data_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DUALPRUNE_OFFLINE", "1")
    err = _error(
        capsys,
        ["train", "--model", "lenet5", "--dataset", "mnist", "--data-dir", str(tmp_path), *QUICK],
    )
    assert "train-images-idx3-ubyte.gz" in err and str(tmp_path) in err


@pytest.mark.parametrize("epochs", ["0", "-3", "two"])
def test_bad_epoch_count(capsys, epochs):
    err = _error(capsys, ["train", "--model", "lenet5", "--dataset", "mnist", "--epochs", epochs])
    assert "--epochs" in err


def test_unwritable_output_directory(capsys, tmp_path, data_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _error(
        capsys,
        [
            "train",
            "--model",
            "lenet5",
            "--dataset",
            "mnist",
            "--out",
            str(blocker / "run"),
            "--data-dir",
            str(data_root),
            *QUICK,
        ],
    )
    assert "cannot write to output directory" in err


def test_checkpoint_of_another_model(capsys, trained, data_root):
    err = _error(
        capsys, ["eval", str(trained), "--model", "lenet300", "--data-dir", str(data_root)]
    )
    assert "saved from model 'lenet5', not 'lenet300'" in err


def test_corrupt_and_truncated_checkpoints(capsys, trained, tmp_path, data_root):
    blob = (trained / "pretrain" / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 3])
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    for name in ("cut.pt", "junk.pt"):
        err = _error(capsys, ["eval", str(tmp_path / name), "--data-dir", str(data_root)])
        assert "truncated or corrupt" in err


def test_model_that_cannot_take_the_images(capsys, data_root):
    err = _error(
        capsys,
        [
            "train",
            "--model",
            "resnet20",
            "--dataset",
            "mnist",
            "--data-dir",
            str(data_root),
            *QUICK,
        ],
    )
    assert "cannot take mnist images" in err


def test_bad_recipe_key(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: lenet5\ndataset: mnist\npretrain: {epochs: 2, lrate: 0.1}\n")
    err = _error(capsys, ["run", str(recipe)])
    assert "pretrain.lrate: unknown key" in err


def test_console_script_exit_code_and_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "dualprune.cli", "eval", "/nonexistent.pt"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "dualprune: error: checkpoint '/nonexistent.pt' does not exist"
