import pytest
import torch
from torch import nn

from dualprune.errors import CheckpointError, ConfigError
from dualprune.train import checkpoint as ck


def _ckpt(model: nn.Module, name: str = "tiny") -> dict:
    return {"format": ck.FORMAT, "model_name": name, "model": model.state_dict(), "epoch": 0}


def test_atomic_save_roundtrip_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    ck.atomic_save(_ckpt(model), tmp_path / "c.pt")
    state = ck.load(tmp_path / "c.pt")
    other = nn.Linear(3, 2)
    ck.load_model_state(other, state, model_name="tiny")
    assert torch.equal(other.weight, model.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_load_accepts_run_directory(tmp_path):
    ck.atomic_save(_ckpt(nn.Linear(3, 2)), tmp_path / "checkpoint.pt")
    assert ck.load(tmp_path)["model_name"] == "tiny"


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    ck.atomic_save(_ckpt(nn.Linear(30, 20)), tmp_path / "c.pt")
    blob = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "c.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
        ck.load(tmp_path / "c.pt")
    assert "\n" not in str(err.value)


def test_garbage_file_is_corrupt(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ck.load(tmp_path / "c.pt")


def test_arbitrary_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    torch.save({"format": ck.FORMAT, "x": Evil()}, tmp_path / "c.pt")
    with pytest.raises(CheckpointError):
        ck.load(tmp_path / "c.pt")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ck.load(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a dualprune checkpoint"):
        ck.load(tmp_path / "plain.pt")


def test_checkpoint_of_another_model(tmp_path):
    state = _ckpt(nn.Linear(3, 2), name="lenet5")
    with pytest.raises(CheckpointError, match="saved from model 'lenet5', not 'resnet20'"):
        ck.load_model_state(nn.Linear(3, 2), state, model_name="resnet20")


def test_checkpoint_with_other_shapes(tmp_path):
    state = _ckpt(nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match="shape of 'weight'"):
        ck.load_model_state(nn.Linear(4, 2), state, model_name="tiny")
    with pytest.raises(CheckpointError, match="missing"):
        ck.load_model_state(nn.Sequential(nn.Linear(3, 2)), state, model_name="tiny")


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot write to output directory"):
        ck.ensure_writable(blocker / "run")


def test_rng_roundtrip():
    state = ck.capture_rng()
    a = torch.rand(3)
    ck.restore_rng(state)
    assert torch.equal(torch.rand(3), a)
