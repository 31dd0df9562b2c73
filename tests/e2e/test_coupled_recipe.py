"""``plan.coupled`` in recipes: validation, the shipped recipe, and a tiny run end to end.

The run uses ResNet-20 on a synthetic 8×8 RGB image folder (3 classes), so it
takes seconds and needs no downloaded data.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import dualprune as dp
from dualprune import models
from dualprune.errors import ConfigError
from dualprune.pipeline import load_recipe, run, validate
from dualprune.pipeline.artifacts import load_run_model

BASE = {
    "model": "resnet20",
    "dataset": "cifar10",
    "pretrain": {"epochs": 1},
    "plan": {
        "layers": {"re:layer.*conv2": {"type": "sparsity", "ratio": 0.5, "structure": "channel"}},
        "coupled": {"ratio": 0.5, "multiple_of": 8, "ignore": ["fc"], "chains": False},
    },
    "solver": {"name": "slr"},
    "compress": {"epochs": 1},
}


@pytest.mark.parametrize(
    ("coupled", "expected"),
    [
        ({"ratio": 1.0}, "plan.coupled.ratio: Input should be less than 1 (got 1.0)"),
        ({"ratio": -0.1}, "plan.coupled.ratio: Input should be greater than or equal to 0"),
        ({}, "plan.coupled.ratio: Field required"),
        ({"ratio": 0.5, "multiple_of": 0}, "plan.coupled.multiple_of: Input should be greater"),
        ({"ratio": 0.5, "multipel_of": 8}, "plan.coupled.multipel_of: unknown key"),
        ({"ratio": 0.5, "roles": ["bn"]}, "plan.coupled.roles.0: Input should be 'weight'"),
        ({"ratio": 0.5, "chains": "maybe"}, "plan.coupled.chains: Input should be a valid bool"),
        ({"ratio": 0.5, "ignore": "fc"}, "plan.coupled.ignore: Input should be a valid list"),
    ],
)
def test_bad_coupled_keys_are_one_line_errors(coupled, expected):
    raw = {**BASE, "plan": {**BASE["plan"], "coupled": coupled}}
    with pytest.raises(ConfigError) as info:
        validate(raw, "r.yaml")
    message = str(info.value)
    assert "\n" not in message and message.startswith("r.yaml: ")
    assert expected in message, message


def test_unknown_plan_key_names_coupled():
    raw = {**BASE, "plan": {"layers": {}, "coupld": {"ratio": 0.5}}}
    with pytest.raises(ConfigError, match=r"r.yaml: plan.coupld: unknown key \(did you mean "):
        validate(raw, "r.yaml")


def test_coupled_alone_is_a_plan_and_bad_globs_fail_before_training():
    recipe = validate({**BASE, "plan": {"coupled": {"ratio": 0.25}}})
    model = models.create("resnet20")
    coupled = recipe.build_coupled(model, torch.zeros(2, 3, 8, 8))
    assert coupled is not None and len(coupled.groups) == 12  # 3 residual + 9 chains
    assert recipe.build_plan().resolve(model) == {}
    bad = validate({**BASE, "plan": {"coupled": {"ratio": 0.5, "ignore": ["fcc"]}}})
    with pytest.raises(ConfigError, match=r"^plan.coupled: ignore pattern 'fcc' matches no"):
        bad.build_coupled(model, torch.zeros(2, 3, 8, 8))


def test_shipped_recipe_builds_its_sets():
    recipe = load_recipe("resnet20-cifar10-coupled")
    model = models.create("resnet20")
    coupled = recipe.build_coupled(model, torch.zeros(2, 3, 32, 32))
    assert [g.root for g in coupled.groups] == ["conv1", "layer2.0.conv2", "layer3.0.conv2"]
    assert coupled.kept() == (8, 16, 32) and coupled.multiple_of == 8
    solver = dp.SLR(model, recipe.build_plan(), coupled=coupled)
    assert len(solver.constraints) == 9


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread; more threads only contend on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """imagefolder:PATH with 3 classes of 8×8 RGB images (24 train, 6 test)."""
    monkeypatch.setenv("DUALPRUNE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, n in (("train", 8), ("test", 2)):
        for c, cls in enumerate(("a", "b", "c")):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a learnable colour cue per class
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def test_tiny_coupled_run_end_to_end(folder, tmp_path, one_thread):
    stage = {"epochs": 1, "batch_size": 8, "lr": 0.05}
    raw = {
        **BASE,
        "dataset": f"imagefolder:{folder}",
        "out": str(tmp_path / "run"),
        "pretrain": stage,
        "solver": {"name": "admm", "rho": 0.01},
        "compress": {**stage, "epochs": 2},
        "retrain": stage,
    }
    result = run(validate(raw), progress=False)
    out = result.out
    assert list(result.stages) == ["pretrain", "compress", "hard_prune", "retrain", "final"]
    masks = dp.Masks.load(out / "masks.safetensors")
    assert {"conv1.weight", "bn1.weight", "bn1.bias", "fc.weight"} <= set(masks.names)
    weights = load_file(str(out / "model.safetensors"))
    stem = weights["conv1.weight"].flatten(1).norm(dim=1)
    assert int((stem != 0).sum()) == 8  # 16 residual channels of stage 1 → 8
    assert not weights["bn1.weight"][stem == 0].any()  # BatchNorm of removed channels too
    assert int((weights["fc.weight"].norm(dim=0) != 0).sum()) == 32  # stage 3: 64 → 32
    updates = [json.loads(x) for x in (out / "compress/updates.jsonl").read_text().splitlines()]
    assert len(updates) == 2 and "coupled" in updates[0] and "fc.weight" in updates[0]["layers"]
    report = json.loads((out / "report.json").read_text())
    structures = {la["name"]: la["structure"] for la in report["layers"]}
    assert structures["conv1"] == "coupled" and structures["layer2.0.conv2"] == "channel+coupled"
    assert structures["layer1.0.conv1"] == "coupled"  # its inputs are residual channels
    assert "groups of coupled channels" in report["summary"]["coupled"]
    layer = {la["name"]: la for la in report["layers"]}["conv1"]
    assert layer["sparsity"] == pytest.approx(0.5)  # zeros of the weight, counted as weights
    model, _ = load_run_model(out)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    small = dp.compact(model, x, masks)
    with torch.no_grad():
        assert (small(x) - model(x)).abs().max() <= 1e-4
    assert small.conv1.out_channels == 8
    again = run(validate(raw), resume=True, progress=False)  # resume: nothing retrained
    assert again.stages == result.stages
