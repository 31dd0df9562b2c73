"""A corpus of hostile inputs: each gives exit code 2, one line on stderr, no traceback.

Every case drives the command line in-process (``dualprune.cli.main``) and checks
that the output directory is left byte for byte as it was, or never created.
Most cases fail while the recipe or the options are checked, before any data is
read; those that need the model against the data set use the ``data_root``
fixture and still fail before any training. A hypothesis test feeds random
recipe mappings to :func:`dualprune.pipeline.validate`: a recipe or a
:class:`~dualprune.errors.DualpruneError` with a one-line message, nothing else.
"""

from __future__ import annotations

import copy
import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from dualprune import models
from dualprune.cli import main
from dualprune.errors import DualpruneError
from dualprune.pipeline import validate
from dualprune.train import checkpoint as ckpt_io

TINY = {"epochs": 1, "batch_size": 64, "train_samples": 256, "test_samples": 200}
BASE: dict[str, Any] = {
    "model": "lenet5",
    "dataset": "mnist",
    "pretrain": TINY,
    "plan": {
        "layers": {
            "conv*": {"type": "sparsity", "ratio": 0.5},
            "fc1": {"type": "sparsity", "ratio": 0.9},
        }
    },
    "solver": {"name": "slr", "rho": 0.1},
    "compress": TINY,
}
DROP = object()  # a value of changed(): remove the key
NAN, INF = float("nan"), float("inf")


class _Trap:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def changed(changes: dict[str, Any]) -> dict[str, Any]:
    """BASE with dotted keys set (``{"pretrain.lr": 0}``) or removed (DROP)."""
    raw = copy.deepcopy(BASE)
    for key, value in changes.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is DROP:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return raw


def snapshot(path: Path) -> Any:
    """Everything under ``path``, byte for byte (None when it does not exist)."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {
        str(p.relative_to(path)): p.read_bytes() if p.is_file() else "<dir>"
        for p in sorted(path.rglob("*"))
    }


def refused(capsys: pytest.CaptureFixture[str], argv: list[Any], *watch: Path) -> str:
    """Run the CLI expecting a user error; check the line and the watched paths."""
    before = [snapshot(w) for w in watch]
    with warnings.catch_warnings(record=True) as caught:  # a warning is a line on stderr too
        warnings.simplefilter("always")
        code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert err.startswith("dualprune: error:") and err.endswith("\n"), err
    assert err.count("\n") == 1 and "\r" not in err, err
    assert len(err) < 4000, f"{len(err)} characters: {err[:300]}..."
    assert [snapshot(w) for w in watch] == before
    return err


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No downloads, no default data root, and relative paths inside tmp_path."""
    monkeypatch.setenv("DUALPRUNE_OFFLINE", "1")
    monkeypatch.setenv("DUALPRUNE_DATA", str(tmp_path / "no-data"))
    monkeypatch.chdir(tmp_path)


def run_argv(recipe: Path, out: Path, data_dir: Path, *extra: Any) -> list[Any]:
    return [
        "run", recipe, "--out", out, "--data-dir", data_dir, "--no-progress", "--threads", "1",
        *extra,
    ]  # fmt: skip


def write_recipe(where: Path, raw: dict[str, Any] | bytes) -> Path:
    path = where / "recipe.yaml"
    path.write_bytes(raw if isinstance(raw, bytes) else yaml.safe_dump(raw).encode())
    return path


def alias_bomb(levels: int) -> bytes:
    """A few hundred bytes of YAML whose value holds 9**levels strings (billion laughs)."""
    text = "model: lenet5\ndataset: mnist\na0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text.encode()


# -- recipe files that are not recipes -------------------------------------------------------

FILES = {
    "empty": (b"", "model: Field required"),
    "binary": (b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01", "not UTF-8 text"),
    "not-yaml": (b"model: [lenet5\ndataset: mnist\n", "not valid YAML"),
    "yaml-list": (b"- model: lenet5\n- dataset: mnist\n", "expected a mapping of keys, got list"),
    "yaml-scalar": (b"42\n", "expected a mapping of keys, got int"),
    "yaml-string": (b"just some words\n", "expected a mapping of keys, got str"),
    "null-byte": (b"model: lenet5\x00\ndataset: mnist\n", "not valid YAML"),
    "tab-indent": (b"model: lenet5\npretrain:\n\tepochs: 1\n", "not valid YAML"),
    "deep-list": (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    "deep-mapping": (b"model: " + b"{a: " * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    "deep-garbage-in-key": (b"model: " + b"[" * 300 + b"]" * 300 + b"\ndataset: mnist\n", "model:"),
    "alias-bomb": (alias_bomb(9), "a0: unknown key"),
    "many-errors": (
        yaml.safe_dump({**BASE, "pretrain": {"milestones": ["x"] * 20_000}}).encode(),
        "pretrain.milestones.0:",
    ),
}


@pytest.mark.parametrize(("content", "expected"), FILES.values(), ids=FILES.keys())
def test_a_recipe_file_that_is_not_a_recipe(capsys, tmp_path, content, expected):
    recipe = write_recipe(tmp_path, content)
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "no-data"), out, recipe)
    assert expected in err, err


def test_a_yaml_tag_that_would_run_code_runs_nothing(capsys, tmp_path):
    marker = tmp_path / "pwned"
    recipe = write_recipe(
        tmp_path, f"model: !!python/object/apply:os.system ['touch {marker}']\n".encode()
    )
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "no-data"), out)
    assert "not valid YAML" in err and not marker.exists()


# -- bad keys and values, caught while the recipe is checked ---------------------------------

SPARSE = {"type": "sparsity", "ratio": 0.9}
MAPPINGS: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-top-key": ({"colour": "red"}, "colour: unknown key"),
    "misspelt-stage": ({"pretrian": TINY}, "pretrian: unknown key"),
    "misspelt-stage-key": ({"compress.epoch": 1}, "compress.epoch: unknown key"),
    "misspelt-solver-key": ({"solver.rhoo": 1}, "solver.slr.rhoo: unknown key"),
    "misspelt-plan-key": ({"plan.layer": {"fc1": SPARSE}}, "did you mean 'layers'?"),
    "stage-is-string": ({"pretrain": "fast"}, "pretrain:"),
    "stage-is-list": ({"compress": [1, 2]}, "compress:"),
    "plan-is-list": ({"plan": ["conv1"]}, "plan:"),
    "plan-layers-is-list": ({"plan.layers": ["conv1"]}, "plan:"),
    "solver-is-string": ({"solver": "slr"}, "solver:"),
    "model-is-list": ({"model": ["lenet5"]}, "model:"),
    "epochs-string": ({"pretrain.epochs": "four"}, "pretrain.epochs:"),
    "epochs-negative": ({"pretrain.epochs": -1}, "pretrain.epochs:"),
    "epochs-huge": ({"compress.epochs": 10**20}, "compress.epochs:"),
    "epochs-nan": ({"pretrain.epochs": NAN}, "pretrain.epochs:"),
    "epochs-fraction": ({"pretrain.epochs": 1.5}, "pretrain.epochs:"),
    "lr-zero": ({"pretrain.lr": 0}, "pretrain.lr:"),
    "lr-negative": ({"compress.lr": -0.1}, "compress.lr:"),
    "lr-inf": ({"pretrain.lr": INF}, "pretrain.lr:"),
    "lr-nan": ({"compress.lr": NAN}, "compress.lr:"),
    "batch-size-zero": ({"pretrain.batch_size": 0}, "pretrain.batch_size:"),
    "batch-size-huge": ({"compress.batch_size": 10**12}, "compress.batch_size:"),
    "batch-size-string": ({"pretrain.batch_size": "big"}, "pretrain.batch_size:"),
    "momentum-one": ({"pretrain.momentum": 1.0}, "pretrain.momentum:"),
    "ratio-one": ({"plan.layers.fc1.ratio": 1.0}, "plan:"),
    "ratio-above-one": ({"plan.layers.fc1.ratio": 1.5}, "plan:"),
    "ratio-negative": ({"plan.layers.fc1.ratio": -0.1}, "plan:"),
    "ratio-nan": ({"plan.layers.fc1.ratio": NAN}, "plan:"),
    "ratio-string": ({"plan.layers.fc1.ratio": "most"}, "plan:"),
    "rho-nan": ({"solver.rho": NAN}, "rho"),
    "rho-inf": ({"solver.rho": INF}, "rho"),
    "rho-string": ({"solver.rho": "high"}, "rho"),
    "M-below-one": ({"solver.M": 0.5}, "solver.slr.M:"),
    "r-negative": ({"solver.r": -1}, "solver.slr.r:"),
    "r-one": ({"solver.r": 1}, "solver.slr.r:"),
    "s0-zero": ({"solver.s0": 0}, "solver.slr.s0:"),
    "rho-growth-below-one": ({"solver.rho_growth": 0.5}, "rho_growth"),
    "update-every-zero": ({"solver.update_every": 0}, "update_every"),
    "update-every-negative": ({"solver.update_every": -3}, "update_every"),
    "solver-unknown": ({"solver.name": "sgd"}, "'admm', 'slr', 'magnitude'"),
    "solver-without-name": ({"solver": {"rho": 0.1}}, "solver.name is missing"),
    "magnitude-schedule-unknown": ({"solver": {"name": "magnitude", "schedule": "cubic"}}, "cubic"),
    "structure-unknown": ({"plan.layers.fc1.structure": "diag"}, "diag"),
    "constraint-type-unknown": ({"plan.layers.fc1.type": "pruning"}, "pruning"),
    "quant-bits-zero": ({"plan.layers.fc1": {"type": "quantization", "bits": 0}}, "bits"),
    "quant-bits-huge": ({"plan.layers.fc1": {"type": "quantization", "bits": 64}}, "bits"),
    "quant-bits-string": ({"plan.layers.fc1": {"type": "quantization", "bits": "3"}}, "bits"),
    "num-classes-zero": ({"num_classes": 0}, "num_classes:"),
    "zoo-unknown": ({"pretrained": "zoo:unknown"}, "zoo:unknown"),
    "zoo-of-another-model": ({"pretrained": "zoo:resnet20-cifar10"}, "holds resnet20 weights"),
    "coupled-ratio-one": ({"plan.coupled": {"ratio": 1.0}}, "plan.coupled.ratio:"),
    "hardware-crossbar": ({"hardware": {"crossbar": "0x0"}}, "hardware"),
    "hardware-profile": ({"hardware": {"profile": "nope"}}, "nope"),
    "hardware-noise": ({"hardware": {"noise": "sigma=abc"}}, "hardware"),
    "plan-without-solver": ({"solver": DROP}, "a plan needs a solver"),
    "solver-without-compress": ({"compress": DROP}, "needs a 'compress' section"),
    "nothing-to-compress": ({"pretrain": DROP}, "nothing to compress"),
    "no-stage": (
        {"pretrain": DROP, "plan": DROP, "solver": DROP, "compress": DROP},
        "has no stage",
    ),
}


@pytest.mark.parametrize(("change", "expected"), MAPPINGS.values(), ids=MAPPINGS.keys())
def test_a_bad_key_or_value(capsys, tmp_path, change, expected):
    recipe = write_recipe(tmp_path, changed(change))
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "no-data"), out)
    assert f"{recipe}: " in err and expected in err, err


# -- names and patterns that only the model and the data can refuse --------------------------

AGAINST_MODEL: dict[str, tuple[dict[str, Any], str]] = {
    "unknown-model": ({"model": "lenet55"}, "unknown model 'lenet55' (did you mean 'lenet5'?)"),
    "model-name-with-newline": ({"model": "lenet\n5"}, "unknown model"),
    "unknown-dataset": ({"dataset": "mnits"}, "mnits"),
    "missing-imagefolder": ({"dataset": "imagefolder:/nonexistent/images"}, "nonexistent"),
    "model-cannot-take-images": ({"model": "resnet20"}, "cannot take mnist images"),
    "plan-pattern-matches-nothing": ({"plan.layers": {"conv9*": SPARSE}}, "conv9*"),
    "rho-negative": ({"solver.rho": -1}, "rho"),
    "rho-zero": ({"solver.rho": 0}, "rho"),
    "rho-pattern-matches-nothing": ({"solver.rho": {"conv9*": 0.1, "*": 0.1}}, "conv9*"),
    "coupled-ignore-matches-nothing": (
        {"plan.coupled": {"ratio": 0.5, "ignore": ["nope*"]}},
        "plan.coupled:",
    ),
}


@pytest.mark.parametrize(("change", "expected"), AGAINST_MODEL.values(), ids=AGAINST_MODEL.keys())
def test_a_name_or_pattern_the_model_refuses(capsys, tmp_path, data_root, change, expected):
    recipe = write_recipe(tmp_path, changed(change))
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, data_root), out)
    assert expected in err, err


def lenet5_checkpoint(path: Path, **change: Any) -> Path:
    """A valid (untrained) LeNet-5 stage checkpoint, as the training loop writes it."""
    torch.manual_seed(0)
    state = {
        "format": ckpt_io.FORMAT,
        "model_name": "lenet5",
        "num_classes": 10,
        "dataset": "mnist",
        "epoch": 0,
        "model": models.create("lenet5", num_classes=10).state_dict(),
    }
    state.update(change)
    for key in [k for k, v in state.items() if v is DROP]:
        del state[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt_io.atomic_save(state, path)
    return path


def _pretrained(tmp_path: Path, kind: str) -> str:
    """A ``pretrained`` source that must be refused."""
    if kind == "missing-checkpoint":
        return str(tmp_path / "missing.pt")
    if kind == "missing-safetensors":
        return str(tmp_path / "missing.safetensors")
    if kind == "directory":
        (tmp_path / "empty-dir").mkdir()
        return str(tmp_path / "empty-dir")
    if kind == "garbage-checkpoint":
        (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
        return str(tmp_path / "junk.pt")
    if kind == "garbage-safetensors":
        (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
        return str(tmp_path / "junk.safetensors")
    if kind == "another-model":
        torch.manual_seed(0)
        state = models.create("lenet300", num_classes=10).state_dict()
        return str(lenet5_checkpoint(tmp_path / "other.pt", model_name="lenet300", model=state))
    if kind == "another-models-safetensors":
        torch.manual_seed(0)
        save_file(
            models.create("lenet300", num_classes=10).state_dict(), tmp_path / "o.safetensors"
        )
        return str(tmp_path / "o.safetensors")
    if kind == "unsafe-pickle":
        evil = {"format": ckpt_io.FORMAT, "model": _Trap(str(tmp_path / "pwned"))}
        torch.save(evil, tmp_path / "evil.pt")
        return str(tmp_path / "evil.pt")
    raise AssertionError(kind)


PRETRAINED = {
    "missing-checkpoint": "does not exist",
    "missing-safetensors": "do not exist",
    "directory": "does not exist",
    "garbage-checkpoint": "truncated or corrupt",
    "garbage-safetensors": "not a readable safetensors file",
    "another-model": "saved from model 'lenet300', not 'lenet5'",
    "another-models-safetensors": "does not fit model 'lenet5'",
    "unsafe-pickle": "loading it would call io.open; refused, nothing in it was executed",
}


@pytest.mark.parametrize(("kind", "expected"), PRETRAINED.items(), ids=PRETRAINED.keys())
def test_bad_pretrained_weights(capsys, tmp_path, data_root, kind, expected):
    recipe = write_recipe(tmp_path, changed({"pretrained": _pretrained(tmp_path, kind)}))
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, data_root), out)
    assert expected in err, err
    assert not (tmp_path / "pwned").exists()


# -- command-line options: --set, --out, --data-dir ------------------------------------------

SETS = {
    "unknown-key": (["--set", "colour=red"], "colour: unknown key"),
    "into-a-scalar": (["--set", "model.name=x"], "'model' is not a section"),
    "bad-value": (["--set", "pretrain.epochs=many"], "pretrain.epochs:"),
    "nan-value": (["--set", "compress.lr=.nan"], "compress.lr:"),
    "empty-key-part": (["--set", "pretrain..epochs=1"], "pretrain.: unknown key"),
    "not-yaml": (["--set", "pretrain=[1"], "is not a YAML value"),
    "deeply-nested-value": (["--set", "pretrain=" + "[" * 3000], "is not a YAML value"),
    "no-equals": (["--set", "nonsense"], "expected KEY=VALUE"),
    "no-key": (["--set", "=3"], "expected KEY=VALUE"),
    "drops-the-solver": (["--set", "solver=null"], "a plan needs a solver"),
    "stage-to-a-number": (["--set", "compress=3"], "compress:"),
    "threads-zero": (["--threads", "0"], "--threads"),
}


@pytest.mark.parametrize(("extra", "expected"), SETS.values(), ids=SETS.keys())
def test_bad_overrides_and_options(capsys, tmp_path, extra, expected):
    recipe = write_recipe(tmp_path, BASE)
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "no-data", *extra), out, recipe)
    assert expected in err, err


@pytest.mark.parametrize("which", ["missing-file", "a-directory", "unknown-builtin"])
def test_a_recipe_that_is_not_there(capsys, tmp_path, which):
    recipe = {"missing-file": tmp_path / "nope.yaml", "a-directory": tmp_path}.get(
        which, "quickstrat"
    )
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "no-data"), out)
    assert "is neither a file nor a built-in recipe" in err


def test_out_under_a_regular_file(capsys, tmp_path, data_root):
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    recipe = write_recipe(tmp_path, BASE)
    err = refused(capsys, run_argv(recipe, blocker / "run", data_root), blocker)
    assert "cannot write to output directory" in err


def earlier_run(out: Path) -> Path:
    """A directory holding what an earlier run left, plus a file of the user's."""
    (out / "pretrain").mkdir(parents=True)
    (out / "pretrain" / "done.json").write_text('{"test_acc": 0.98, "test_loss": 0.1}\n')
    (out / "pretrain" / "checkpoint.pt").write_bytes(b"not really a checkpoint")
    (out / "run.json").write_text('{"model": "lenet5"}\n')
    (out / "final.json").write_text('{"test_acc": 0.98, "test_loss": 0.1}\n')
    (out / "notes.txt").write_text("mine\n")
    return out


@pytest.mark.parametrize(
    ("extra", "change", "expected"),
    [
        ([], {}, "holds an earlier run (pretrain, ...); pass --resume"),
        (["--overwrite"], {"pretrain.lr": -1}, "pretrain.lr:"),
        (["--overwrite"], {"solver.rho": {"conv9*": 0.1}}, "conv9*"),
    ],
    ids=["no-resume-or-overwrite", "overwrite-with-a-bad-recipe", "overwrite-with-a-bad-plan"],
)
def test_an_earlier_run_is_left_untouched(capsys, tmp_path, data_root, extra, change, expected):
    out = earlier_run(tmp_path / "out")
    recipe = write_recipe(tmp_path, changed(change))
    err = refused(capsys, run_argv(recipe, out, data_root, *extra), out)
    assert expected in err, err


def test_a_data_dir_that_does_not_exist(capsys, tmp_path):
    recipe = write_recipe(tmp_path, BASE)
    out = tmp_path / "out"
    err = refused(capsys, run_argv(recipe, out, tmp_path / "nowhere"), out)
    assert str(tmp_path / "nowhere") in err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--momentum", "1.5"], "pretrain.momentum:"),
        (["--weight-decay", "nan"], "pretrain.weight_decay:"),
        (["--lr", "inf"], "--lr"),
        (["--epochs", "1e9"], "--epochs"),
    ],
    ids=["momentum", "weight-decay-nan", "lr-inf", "epochs-float"],
)
def test_train_with_bad_settings(capsys, tmp_path, extra, expected):
    out = tmp_path / "out"
    argv = ["train", "--model", "lenet5", "--dataset", "mnist", "--out", out, *extra]
    err = refused(capsys, [*argv, "--data-dir", tmp_path / "no-data"], out)
    assert expected in err, err


# -- compact / export / hw / report / eval on what is not a run ------------------------------


def _target(where: Path, kind: str) -> Path:
    """A path a deployment command must refuse."""
    if kind == "missing":
        return where / "nope"
    if kind == "not-a-run":
        (where / "plain").mkdir()
        (where / "plain" / "notes.txt").write_text("mine\n")
        return where / "plain"
    if kind == "garbage-checkpoint":
        (where / "junk.pt").write_bytes(bytes(range(256)) * 8)
        return where / "junk.pt"
    if kind == "unsafe-checkpoint":
        evil = {"format": ckpt_io.FORMAT, "model": _Trap(str(where / "pwned"))}
        (where / "stage").mkdir()
        torch.save(evil, where / "stage" / "checkpoint.pt")
        return where / "stage"
    if kind == "unsafe-raw-pickle":
        (where / "evil.pkl").write_bytes(pickle.dumps(_Trap(str(where / "pwned")), protocol=2))
        return where / "evil.pkl"
    if kind == "unsafe-raw-pickle-protocol-5":  # an opcode torch's safe unpickler refuses
        (where / "evil.pkl").write_bytes(pickle.dumps(_Trap(str(where / "pwned")), protocol=5))
        return where / "evil.pkl"
    if kind == "checkpoint-with-a-string-weight":
        state = models.create("lenet5", num_classes=10).state_dict()
        state["fc2.bias"] = "0.0"
        return lenet5_checkpoint(where / "stage" / "checkpoint.pt", model=state)
    if kind == "checkpoint-without-weights":
        return lenet5_checkpoint(where / "stage" / "checkpoint.pt", model=DROP)
    if kind == "checkpoint-of-unknown-model":
        return lenet5_checkpoint(where / "stage" / "checkpoint.pt", model_name="lenet55")
    raise AssertionError(kind)


NOT_RUNS = {
    "missing": "does not exist",
    "not-a-run": "neither a run directory",
    "garbage-checkpoint": "truncated or corrupt",
    "unsafe-checkpoint": "loading it would call io.open; refused",
    "unsafe-raw-pickle": "loading it would call io.open; refused",
    "unsafe-raw-pickle-protocol-5": "truncated or corrupt",
    "checkpoint-with-a-string-weight": "'fc2.bias' is not a tensor",
    "checkpoint-without-weights": "holds no model weights",
    "checkpoint-of-unknown-model": "lenet55",
}


@pytest.mark.parametrize("kind", NOT_RUNS)
@pytest.mark.parametrize("command", ["compact", "export", "hw", "report", "eval"])
def test_a_deployment_command_on_what_is_not_a_run(request, capsys, tmp_path, command, kind):
    work = tmp_path / "work"
    work.mkdir()
    target = _target(work, kind)
    argv = [command, target]
    if command == "export":
        argv += ["--format", "packed"]
    if command in ("eval", "hw"):
        # eval reads the test set before the weights of a checkpoint that loads
        loads = command == "eval" and kind.startswith("checkpoint-")
        data = request.getfixturevalue("data_root") if loads else tmp_path / "no-data"
        argv += ["--data-dir", data]
    err = refused(capsys, argv, work)
    if command == "report":  # reads run directories only
        assert "not a finished run directory" in err, err
    elif command == "eval" and kind == "not-a-run":
        assert "does not exist" in err, err
    else:
        assert NOT_RUNS[kind] in err, err
    assert not (work / "pwned").exists()


def damaged_run(where: Path, kind: str) -> Path:
    """A run directory with one file damaged (the others as a run writes them)."""
    out = where / "run"
    out.mkdir()
    torch.manual_seed(0)
    info = {"model": "lenet5", "num_classes": 10, "dataset": "mnist", "input_shape": [1, 28, 28]}
    (out / "run.json").write_text(json.dumps(info) + "\n")
    save_file(models.create("lenet5", num_classes=10).state_dict(), out / "model.safetensors")
    (out / "recipe.yaml").write_text(yaml.safe_dump({**BASE, "out": str(out)}))
    if kind == "run-json-garbage":
        (out / "run.json").write_bytes(b"\x00\xff garbage")
    elif kind == "run-json-a-list":
        (out / "run.json").write_text("[1, 2]\n")
    elif kind == "run-json-incomplete":
        (out / "run.json").write_text('{"model": "lenet5"}\n')
    elif kind == "run-json-unknown-model":
        (out / "run.json").write_text(json.dumps({**info, "model": "lenet55"}) + "\n")
    elif kind == "weights-garbage":
        (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    elif kind == "weights-of-another-model":
        save_file(models.create("lenet300", num_classes=10).state_dict(), out / "model.safetensors")
    elif kind == "recipe-missing":
        (out / "recipe.yaml").unlink()
    elif kind == "recipe-binary":
        (out / "recipe.yaml").write_bytes(b"\xff\xfe\x00garbage")
    elif kind == "recipe-a-list":
        (out / "recipe.yaml").write_text("- 1\n- 2\n")
    elif kind == "recipe-not-yaml":
        (out / "recipe.yaml").write_text("model: [lenet5\n")
    elif kind == "recipe-deeply-nested":
        (out / "recipe.yaml").write_text("[" * 5000 + "]" * 5000)
    elif kind == "recipe-bad-value":
        (out / "recipe.yaml").write_text(yaml.safe_dump(changed({"pretrain.lr": -1})))
    else:
        raise AssertionError(kind)
    return out


RUN_FILES = [
    "run-json-garbage",
    "run-json-a-list",
    "run-json-incomplete",
    "run-json-unknown-model",
    "weights-garbage",
    "weights-of-another-model",
]
RECIPE_FILES = [
    "recipe-missing",
    "recipe-binary",
    "recipe-a-list",
    "recipe-not-yaml",
    "recipe-deeply-nested",
    "recipe-bad-value",
]


@pytest.mark.parametrize(
    ("command", "kind"),
    [(c, k) for c in ("compact", "export", "hw", "report", "eval") for k in RUN_FILES]
    + [
        (c, k)
        for c in ("compact", "export", "hw", "report")
        for k in RECIPE_FILES
        if not (k == "recipe-missing" and c != "report")
    ],
)
def test_a_damaged_run_directory(capsys, tmp_path, command, kind):
    run_dir = damaged_run(tmp_path, kind)
    argv = [command, run_dir]
    if command == "export":
        argv += ["--format", "packed"]
    if command in ("eval", "hw"):
        argv += ["--data-dir", tmp_path / "no-data"]
    err = refused(capsys, argv, tmp_path)
    assert str(run_dir) in err, err


# -- deployment options that cannot work, on a valid checkpoint ------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["hw", "{ckpt}", "--xbar", "0x0"], "rows must be a positive integer"),
        (["hw", "{ckpt}", "--xbar", "wide"], "wide"),
        (["hw", "{ckpt}", "--profile", "nope"], "nope"),
        (["hw", "{ckpt}", "--noise", "sigma=abc"], "sigma"),
        (["hw", "{ckpt}", "--noise", "sigma=-1"], "sigma"),
        (["hw", "{ckpt}", "--chips", "0"], "--chips"),
        (["hw", "{ckpt}", "--json", "{file}/hw.json"], "{file}"),
        (["hw", "{ckpt}", "--json", "{stage}"], "is a directory"),
        (["bench", "{ckpt}", "--json", "{file}/bench.json"], "{file}"),
        (["export", "{ckpt}", "--format", "packed", "--out", "{file}/m.safetensors"], "{file}"),
        (["export", "{ckpt}", "--format", "torch", "--out", "{file}/m.safetensors"], "{file}"),
        (["export", "{ckpt}", "--format", "tflite"], "--format"),
        (["compact", "{ckpt}", "--out", "{file}/compact"], "{file}"),
        (["eval", "{ckpt}", "--dataset", "mnits"], "mnits"),
        (["eval", "{ckpt}", "--batch-size", "0"], "--batch-size"),
        (["widths", "lenet55"], "lenet55"),
        (["widths", "lenet5", "--macs-ratio", "nan"], "--macs-ratio"),
    ],
    ids=[
        "hw-crossbar-zero",
        "hw-crossbar-word",
        "hw-profile",
        "hw-noise-word",
        "hw-noise-negative",
        "hw-chips-zero",
        "hw-json-under-a-file",
        "hw-json-a-directory",
        "bench-json-under-a-file",
        "export-packed-under-a-file",
        "export-torch-under-a-file",
        "export-format",
        "compact-out-under-a-file",
        "eval-dataset",
        "eval-batch-size",
        "widths-model",
        "widths-macs-ratio",
    ],
)
def test_deployment_options_that_cannot_work(capsys, tmp_path, args, expected):
    work = tmp_path / "work"
    ckpt = lenet5_checkpoint(work / "stage" / "checkpoint.pt")
    blocker = work / "a-file"
    blocker.write_text("keep me\n")
    fill = {"ckpt": str(ckpt), "file": str(blocker), "stage": str(ckpt.parent)}
    argv = [a.format(**fill) for a in args] + ["--data-dir", str(tmp_path / "no-data")] * (
        args[0] in ("eval", "hw")
    )
    err = refused(capsys, argv, work)
    assert expected.format(**fill) in err, err


def test_eval_of_a_checkpoint_without_an_epoch_evaluates_it(capsys, tmp_path, data_root):
    """Not refused, but no longer a KeyError: the weights are all eval needs."""
    ckpt = lenet5_checkpoint(tmp_path / "stage" / "checkpoint.pt", epoch=DROP)
    assert main(["eval", str(ckpt), "--data-dir", str(data_root)]) == 0
    assert "lenet5 (checkpoint) on mnist test: accuracy" in capsys.readouterr().out


def test_eval_of_a_checkpoint_as_another_model(capsys, tmp_path, data_root):
    ckpt = lenet5_checkpoint(tmp_path / "stage" / "checkpoint.pt")
    err = refused(capsys, ["eval", ckpt, "--model", "lenet300", "--data-dir", data_root], tmp_path)
    assert "saved from model 'lenet5', not 'lenet300'" in err, err


# -- random recipes through validate() ----------------------------------------------------

KEY_NAMES = [
    "model", "dataset", "out", "data_dir", "num_classes", "pretrained", "pretrain", "plan",
    "solver", "compress", "retrain", "hardware", "layers", "exclude", "default", "coupled",
    "epochs", "lr", "batch_size", "momentum", "milestones", "seed", "type", "ratio",
    "structure", "bits", "levels", "name", "rho", "M", "r", "s0", "rho_growth",
    "update_every", "schedule", "ignore", "multiple_of", "crossbar", "profile", "noise",
    "conv*", "fc1", "re:(", "*", "", "colour", "1",
]  # fmt: skip
WORDS = [
    "lenet5", "resnet20", "mnist", "cifar10", "slr", "admm", "magnitude", "sparsity",
    "quantization", "filter", "column", "channel", "block", "irregular", "ternary", "pow2",
    "zoo:resnet20-cifar10", "zoo:nope", "re:(", "re:fc.*", "conv*", "128x128", "0x0",
    "isaac32", "sigma=abc", "sigma=0.02", "cosine", "", "\n", "x\ny",
]  # fmt: skip
KEYS = st.sampled_from(KEY_NAMES)
KEYS_ANY = KEYS | st.sampled_from([0, 1, -1, None, True, 2.5])
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(WORDS)
    | st.text(max_size=6)
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS_ANY, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_base(draw: st.DrawFn) -> dict[str, Any]:
    """BASE with a few keys (some nested, some new) set to random values or removed."""
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        node = raw
        for _ in range(draw(st.integers(0, 3))):
            key = draw(KEYS)
            if not isinstance(node.get(key), dict):
                break
            node = node[key]
        key = draw(KEYS_ANY)
        if draw(st.booleans()) and node:
            node.pop(draw(st.sampled_from(sorted(node, key=str))), None)
        else:
            node[key] = draw(VALUES)
    return raw


@settings(max_examples=50, deadline=None)
@given(raw=st.dictionaries(KEYS_ANY, VALUES, max_size=8) | mutated_base())
def test_random_recipes_validate_or_give_one_line(raw):
    try:
        recipe = validate(raw, "fuzz.yaml")
    except DualpruneError as err:
        message = str(err)
        assert message.startswith("fuzz.yaml: ") and "\n" not in message, message
    else:  # (not isinstance: tests/pipeline reloads the recipe module, and Recipe with it)
        assert (recipe.model, recipe.dataset) == (raw["model"], raw["dataset"])
