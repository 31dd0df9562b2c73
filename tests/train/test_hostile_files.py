"""Hostile or damaged files give one-line errors and run nothing; torn log lines are survived."""

from __future__ import annotations

import pytest
import torch
from train_helpers import CFG, META, loaders, tiny_model

from dualprune.errors import CheckpointError, ConfigError
from dualprune.pipeline import load_recipe
from dualprune.train import checkpoint as ckpt_io
from dualprune.train.config import TrainConfig, parse
from dualprune.train.loop import fit
from dualprune.train.run import read_jsonl


class _Trap:
    """Unpickling this would create ``path``: proof that code ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_that_runs_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoint.pt"
    torch.save({"format": ckpt_io.FORMAT, "model": _Trap(str(marker))}, evil)
    want = "is not a safe checkpoint: loading it would call io.open; refused, nothing"
    with pytest.raises(CheckpointError, match=want):
        ckpt_io.load(evil)
    assert not marker.exists()


def test_a_binary_recipe_is_one_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00\x01")
    with pytest.raises(ConfigError, match="not a recipe \\(not UTF-8 text"):
        load_recipe(recipe)


@pytest.mark.parametrize("key,value", [("epochs", 10**20), ("batch_size", 10**12)])
def test_absurd_sizes_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        parse(TrainConfig, {key: value}, "pretrain")


def test_resume_survives_a_torn_last_metrics_line(tmp_path):
    train, test = loaders()
    fit(tiny_model(), train, test, CFG.model_copy(update={"epochs": 1}), tmp_path, meta=META,
        progress=False)  # fmt: skip
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # a kill in the middle of the append
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    train, test = loaders()
    fit(tiny_model(), train, test, CFG.model_copy(update={"epochs": 2}), tmp_path, meta=META,
        progress=False, resume=True)  # fmt: skip
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_a_damaged_line_before_the_last_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')
    with pytest.raises(CheckpointError, match="line 2 is not JSON"):
        read_jsonl(path)
