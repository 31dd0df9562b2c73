"""The pipeline end to end on a tiny budget: stages, files, report, resume, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dualprune import Masks
from dualprune.cli import main
from dualprune.pipeline import report_run, run, validate

TINY = {"epochs": 1, "batch_size": 64, "train_samples": 512, "test_samples": 300}


def tiny_recipe(out, data_root, **change):
    raw = {
        "model": "lenet5",
        "dataset": "mnist",
        "data_dir": str(data_root),
        "out": str(out),
        "pretrain": TINY,
        "plan": {
            "layers": {
                "conv*": {"type": "sparsity", "ratio": 0.5, "structure": "filter"},
                "fc1": [{"type": "sparsity", "ratio": 0.95}, {"type": "quantization", "bits": 3}],
            }
        },
        "solver": {"name": "slr", "rho": 0.1},
        "compress": {**TINY, "epochs": 2},
        "retrain": TINY,
    }
    raw.update(change)
    return validate(raw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run")
    result = run(tiny_recipe(out, data_root), progress=False)
    return out, result


def test_run_writes_every_stage_and_the_report(finished):
    out, result = finished
    assert list(result.stages) == ["pretrain", "compress", "hard_prune", "retrain", "final"]
    for name in (
        "recipe.yaml",
        "run.json",
        "pretrain/checkpoint.pt",
        "compress/updates.jsonl",
        "hard_prune.json",
        "masks.safetensors",
        "model.safetensors",
        "report.md",
        "report.json",
    ):
        assert (out / name).exists(), name
    updates = [
        json.loads(line) for line in (out / "compress/updates.jsonl").read_text().splitlines()
    ]
    assert [u["update"] for u in updates] == [1, 2]
    assert {"step_size", "conditions", "layers"} <= set(updates[0])
    report = json.loads((out / "report.json").read_text())
    assert {"layers", "totals", "stages"} <= set(report)
    assert set(report["stages"]) == {"pretrain", "compress", "hard_prune", "retrain", "final"}
    assert {"compression_prunable", "storage_ratio", "macs_effective"} <= set(report["totals"])
    assert result.test_acc == report["stages"]["final"]["test_acc"]


def test_final_weights_are_in_the_sets(finished):
    out, _ = finished
    weights = load_file(str(out / "model.safetensors"))
    masks = Masks.load(out / "masks.safetensors")
    conv1 = weights["conv1.weight"]
    assert (conv1.flatten(1).norm(dim=1) == 0).sum() == 10  # 50% of 20 filters
    fc1 = weights["fc1.weight"]
    assert torch.equal(fc1 != 0, masks["fc1.weight"] & (fc1 != 0))
    assert (fc1 != 0).sum() <= round(0.05 * fc1.numel())
    assert len(torch.unique(fc1[fc1 != 0].abs())) <= 3  # 3-bit: levels ±1..±3 times α


def test_report_command_rebuilds_the_report(finished, capsys):
    out, _ = finished
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").exists()
    assert "fc1" in capsys.readouterr().out


def test_resume_of_a_finished_run_reruns_nothing(finished, data_root, capsys):
    out, first = finished
    again = run(tiny_recipe(out, data_root), resume=True, progress=False)
    assert "epoch" not in capsys.readouterr().out  # no stage trained again
    assert again.stages == first.stages


def test_interrupted_run_resumes_to_the_same_weights(tmp_path, data_root, monkeypatch):
    whole = run(tiny_recipe(tmp_path / "whole", data_root), progress=False)
    recipe = tiny_recipe(tmp_path / "cut", data_root)
    import dualprune.pipeline.stages as stages

    real = stages._hard_prune

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "_hard_prune", crash)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, progress=False)
    monkeypatch.setattr(stages, "_hard_prune", real)
    resumed = run(recipe, resume=True, progress=False)
    assert resumed.stages == whole.stages
    a = load_file(str(tmp_path / "whole" / "model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_magnitude_and_admm_run(tmp_path, data_root):
    for name in ("admm", "magnitude"):
        r = run(
            tiny_recipe(tmp_path / name, data_root, solver={"name": name}, retrain={"epochs": 0}),
            progress=False,
        )
        assert "retrain" not in r.stages and r.stages["final"] == r.stages["hard_prune"]


def test_cli_errors_are_one_line(tmp_path, capsys, data_root):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    assert main(["run", "quickstart", "--set", "solver.name=sgd", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'admm', 'slr', 'magnitude'" in err
    assert main(["run", "quickstart", "--set", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err


def test_report_run_needs_a_run_directory(tmp_path):
    from dualprune.errors import CheckpointError

    with pytest.raises(CheckpointError, match="not a finished run directory"):
        report_run(tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model": "lenet55"}, "lenet55"),
        ({"solver": {"name": "slr", "rho": {"conv9*": 0.1, "*": 0.1}}}, "conv9"),
        ({"pretrained": "missing.safetensors"}, "do not exist"),
    ],
    ids=["model-name", "rho-pattern", "pretrained"],
)
def test_a_bad_run_fails_before_touching_an_earlier_run(tmp_path, data_root, change, match):
    """Validation comes before any work: the earlier run's files stay as they were."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "final.json").write_text('{"test_acc": 0.99}\n')
    (out / "pretrain").mkdir()
    (out / "pretrain" / "done.json").write_text("{}\n")
    with pytest.raises(Exception, match=match) as err:
        run(tiny_recipe(out, data_root, **change), overwrite=True, progress=False)
    assert type(err.value).__module__ == "dualprune.errors"
    assert (out / "final.json").read_text() == '{"test_acc": 0.99}\n'
    assert (out / "pretrain" / "done.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["final.json", "pretrain"]


def test_an_earlier_run_is_kept_unless_overwrite(tmp_path, data_root, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "hard_prune.json").write_text("{}\n")
    with pytest.raises(Exception, match="holds an earlier run .*--resume .*--overwrite"):
        run(tiny_recipe(out, data_root), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["hard_prune.json"]
    args = ["run", "quickstart", "--out", str(out), "--data-dir", str(data_root)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and err.count("\n") == 1
