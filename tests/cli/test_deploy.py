"""compact, bench, export and hw on a finished tiny run (and the run's hardware stage)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dualprune import Masks, models
from dualprune.cli import main
from dualprune.errors import CheckpointError, ConfigError
from dualprune.export import load_packed, load_torch
from dualprune.hardware import CrossbarSpec, map_model
from dualprune.pipeline import run, validate
from dualprune.pipeline.artifacts import load_artifact

TINY = {"epochs": 1, "batch_size": 64, "train_samples": 512, "test_samples": 300}
HARDWARE = {"crossbar": "64x64", "weight_bits": 4, "noise": "sigma=0.02,stuck_min=0.01", "chips": 2}


def recipe(out, data_root, **change):
    raw = {
        "model": "lenet5",
        "dataset": "mnist",
        "data_dir": str(data_root),
        "out": str(out),
        "pretrain": TINY,
        "plan": {
            "layers": {
                "conv1": {"type": "sparsity", "ratio": 0.5, "structure": "filter"},
                "fc1": [
                    {"type": "sparsity", "ratio": 0.9, "structure": "block", "block": [64, 16]},
                    {"type": "quantization", "bits": 4},
                ],
            }
        },
        "solver": {"name": "admm", "rho": 0.01},
        "compress": TINY,
        "retrain": TINY,
        "hardware": HARDWARE,
    }
    raw.update(change)
    return validate(raw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("run")
    run(recipe(out, data_root), progress=False)
    return out


def test_the_run_has_a_hardware_stage(finished):
    hw = json.loads((finished / "hardware.json").read_text())
    assert set(hw) == {"options", "mapping", "cost", "chips"}
    assert hw["chips"]["n_chips"] == 2 and len(hw["chips"]["accs"]) == 2
    red = hw["cost"]["reductions"]
    assert 0 < red["crossbars"] < 1 and hw["cost"]["crossbars"] < hw["cost"]["dense"]["crossbars"]
    assert "## Hardware (crossbar)" in (finished / "report.md").read_text()
    assert "hardware" in json.loads((finished / "report.json").read_text())


def test_hw_command_maps_like_the_library(finished, tmp_path, capsys):
    path = tmp_path / "hw.json"
    args = ["hw", str(finished), "--xbar", "128x128", "--test-samples", "200", "--json", str(path)]
    assert main(args) == 0
    hw = json.loads(path.read_text())
    art = load_artifact(finished)
    spec = CrossbarSpec(weight_bits=4)  # 128x128; weight bits from the recipe
    direct = map_model(art.model, spec, art.masks, art.example_input())
    assert hw["cost"]["crossbars"] == direct.totals()["crossbars"]
    assert "chips" in hw  # the recipe's noise is the default
    assert "vs dense" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--profile", "nope"], "profile 'nope' is unknown"),
        (["--noise", "bogus=1"], "device noise key 'bogus'"),
        (["--xbar", "12y"], "not ROWSxCOLS"),
    ],
)
def test_hw_errors_are_one_line(finished, capsys, flags, message):
    assert main(["hw", str(finished), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compact_command_writes_a_smaller_equal_model(finished, tmp_path):
    out = tmp_path / "small"
    assert main(["compact", str(finished), "--out", str(out)]) == 0
    small = load_torch(out / "model.safetensors")
    art = load_artifact(finished)
    x = art.random_input(4)
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in art.model.parameters()
    )
    assert torch.allclose(small(x), art.model(x), atol=1e-4)
    plan = json.loads((out / "compaction.json").read_text())
    assert plan["params_after"] < plan["params_before"]


def test_compact_out_under_a_file_is_one_line(finished, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    assert main(["compact", str(finished), "--out", str(blocker / "small")]) == 2
    err = capsys.readouterr().err
    assert "cannot write to output directory" in err and err.count("\n") == 1
    assert blocker.read_text() == "not a folder\n"


def test_bench_command_times_every_variant(finished, tmp_path, capsys):
    path = tmp_path / "bench.json"
    args = ["bench", str(finished), "--repeats", "1", "--batch-sizes", "1,4", "--json", str(path)]
    assert main(args) == 0
    result = json.loads(path.read_text())
    assert set(result["batches"]) == {"1", "4"}
    text = capsys.readouterr().out
    assert "compacted" in text and "sparse" in text
    # bench.json in the run directory puts the latency table into the report
    assert main(["bench", str(finished), "--repeats", "1", "--batch-sizes", "2"]) == 0
    assert "## Measured latency" in (finished / "report.md").read_text()


def test_bench_rejects_bad_batch_sizes(finished, capsys):
    assert main(["bench", str(finished), "--batch-sizes", "0"]) == 2
    assert "batch sizes must be positive" in capsys.readouterr().err


def test_export_packed_restores_bit_identical_weights(finished, tmp_path):
    path = tmp_path / "m.packed.safetensors"
    assert main(["export", str(finished), "--format", "packed", "--out", str(path)]) == 0
    restored = load_packed(path, models.create("lenet5"))
    saved = load_file(str(finished / "model.safetensors"))
    for name, tensor in restored.state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_export_torch_and_onnx(finished, tmp_path):
    path = tmp_path / "m.safetensors"
    assert main(["export", str(finished), "--format", "torch", "--out", str(path)]) == 0
    art = load_artifact(finished)
    x = art.random_input(3)
    assert torch.allclose(load_torch(path)(x), art.model(x), atol=1e-4)
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "m.onnx"
    assert main(["export", str(finished), "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert onnx_path.stat().st_size > 0


def test_export_of_a_missing_run_is_an_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), "--format", "packed"]) == 2
    assert "checkpoint" in capsys.readouterr().err


def test_artifact_from_a_checkpoint_and_its_dense_model(finished, tmp_path):
    art = load_artifact(finished / "pretrain" / "checkpoint.pt")
    assert art.name == "lenet5" and art.masks is None and art.run_dir is None
    assert art.dense_model() is None
    run_art = load_artifact(finished)
    dense = run_art.dense_model()
    assert isinstance(run_art.masks, Masks) and dense is not None
    assert torch.equal(dense.conv1.weight, art.model.conv1.weight)
    with pytest.raises(CheckpointError, match="neither a run directory"):
        load_artifact(tmp_path)


def test_recipe_hardware_section_is_validated(tmp_path, data_root):
    with pytest.raises(ConfigError, match="hardware"):
        recipe(tmp_path, data_root, hardware={**HARDWARE, "crossbar": "64"})
    with pytest.raises(ConfigError, match="hardware"):
        recipe(tmp_path, data_root, hardware={**HARDWARE, "profile": "nope"})
    with pytest.raises(ConfigError, match="hardware"):
        recipe(tmp_path, data_root, hardware={**HARDWARE, "colour": 3})


def test_widths_command_on_a_zoo_model(tmp_path, capsys):
    out = tmp_path / "widths.json"
    code = main(
        [
            "widths",
            "lenet5",
            "--macs-ratio",
            "2",
            "--slack",
            "0.1",
            "--multiple-of",
            "10",
            "--batch-size",
            "4",
            "--repeats",
            "2",
            "--json",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert code == 0 and "<- fastest" in text
    data = json.loads(out.read_text())
    assert data["model"] == "lenet5" and 2 <= data["best"]["macs_ratio"] <= 2.2


def test_widths_command_unknown_model(capsys):
    assert main(["widths", "lenet-9"]) == 2
    assert "lenet-9" in capsys.readouterr().err
