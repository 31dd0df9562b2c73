"""Masks: build, apply, attach (pruned weights stay 0, levels via STE), detach, save/load, errors.

Organised by life-cycle phase; every error test checks a one-line message naming the
bad name/shape/file and what is allowed.
"""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.optim.optimizer import _global_optimizer_post_hooks

import dualprune as dp
from dualprune import models
from dualprune.constraints import Quantization, Sparsity
from dualprune.errors import CheckpointError, ConfigError, ConstraintError, UnknownNameError
from dualprune.masks.masks import FORMAT, Masks

# ---- helpers ------------------------------------------------------------------------------


class Toy(nn.Module):
    """conv (6×3×3×3) → ReLU → fc (5×96): a Conv2d and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))  # (B, 96) → (B, 5)


def toy(seed: int = 0) -> Toy:
    torch.manual_seed(seed)
    return Toy()


def data(seed: int = 1, n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def random_mask(shape: tuple[int, ...], keep: float = 0.4, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < keep


def toy_masks(model: Toy, quantized: bool = False) -> Masks:
    masks = {
        "conv.weight": random_mask(tuple(model.conv.weight.shape), seed=2),
        "fc.weight": random_mask(tuple(model.fc.weight.shape), seed=3),
    }
    return Masks(masks, {"fc.weight": Quantization(bits=3)} if quantized else None)


def step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> float:
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def on_levels(w: torch.Tensor, q: Quantization, alpha: torch.Tensor, keep: torch.Tensor) -> bool:
    """Every kept entry equals α·ℓ_j for some level, every pruned entry is 0 (exactly)."""
    grid = q.level_values().to(w.dtype) * alpha.to(w.dtype).unsqueeze(-1)  # (..., L)
    hits = (w.detach().unsqueeze(-1) == grid).any(-1)
    return bool(torch.where(keep, hits, w == 0).all())


def raises(exc, *fragments):
    """pytest.raises plus: the message is one line and contains every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *args):
            if not self.ctx.__exit__(*args):
                return False
            msg = str(self.info.value)
            assert "\n" not in msg, msg
            for f in fragments:
                assert f in msg, (f, msg)
            return True

    return _Check()


OPTIMIZERS = {
    "sgd-nesterov-wd": lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "sgd-momentum-loop": lambda ps: torch.optim.SGD(
        ps, lr=0.05, momentum=0.9, weight_decay=5e-4, foreach=False
    ),
    "adam": lambda ps: torch.optim.Adam(ps, lr=1e-2),
    "adam-fused-amsgrad": lambda ps: torch.optim.Adam(ps, lr=1e-2, amsgrad=True, fused=True),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
}


# ---- build ----------------------------------------------------------------------------------


def test_sparsity_is_exact_per_parameter_and_total():
    masks = Masks(
        {
            "a": torch.tensor([[True, False], [False, False]]),
            "b": torch.ones(3, dtype=torch.bool),
            "c": torch.zeros(5, dtype=torch.bool),
        }
    )
    assert masks.sparsity() == {"a": 0.75, "b": 0.0, "c": 1.0, "total": 8 / 12}
    assert len(masks) == 3 and "b" in masks and "z" not in masks
    assert masks.names == ("a", "b", "c")
    assert repr(masks) == "Masks(3 parameters, sparsity 0.6667, 0 quantized)"
    assert Masks({}).sparsity() == {"total": 0.0}


def test_from_constraints_takes_supports_quantizers_and_scales():
    model = toy()
    c_fc = Sparsity(0.75) & Quantization(bits=3, scale="channel")
    masks = Masks.from_constraints(model, {"conv": Sparsity(0.5, "filter"), "fc": c_fc})
    assert masks.names == ("conv.weight", "fc.weight")
    w = model.fc.weight.detach()
    assert torch.equal(masks["fc.weight"], c_fc.mask(w))
    assert masks.quantizers == {"fc.weight": c_fc.value}
    assert torch.equal(masks.scales["fc.weight"], c_fc.codes(w)[1])
    assert masks.sparsity()["conv.weight"] == 0.5
    assert masks.sparsity()["fc.weight"] == 1 - int(c_fc.mask(w).sum()) / w.numel()


CONSTRAINTS = [
    Sparsity(0.6),
    Sparsity(0.5, "filter"),
    Quantization(bits=4),
    Quantization(levels="ternary"),
    Sparsity(0.7) & Quantization(bits=3),
    Sparsity(0.5) & Quantization(levels="binary", scale="channel"),
    Sparsity(0.4, "filter") & Quantization(levels="ternary"),
    Sparsity(0.5) & Quantization(levels="pow2", bits=3),
    Sparsity(0.3) & Quantization(levels=[-1.0, -0.3, 0.0, 0.6, 1.0]),
    Quantization(levels=[-0.2, 0.0, 0.2], scale="none"),
]


@settings(max_examples=30, deadline=None)
@given(
    index=st.integers(0, len(CONSTRAINTS) - 1),
    out=st.integers(1, 6),
    inp=st.integers(1, 5),
    k=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_apply_is_the_identity_on_the_hard_pruned_weights(index, out, inp, k, seed):
    """The solver's order: masks from W, then W ← Π_S(W); apply leaves that unchanged."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(inp, out, k))
    c = CONSTRAINTS[index]
    masks = Masks.from_constraints(model, {"0": c})
    w = model[0].weight
    with torch.no_grad():
        w.copy_(c.project(w))
    projected = w.detach().clone()
    masks.apply(model)
    assert torch.equal(w, projected)
    masks.apply(model)  # idempotent
    assert torch.equal(w, projected)


def test_apply_projects_onto_the_fixed_set():
    model = toy()
    masks = toy_masks(model, quantized=True)  # scales fitted at apply
    masks.apply(model)
    keep = masks["conv.weight"]
    assert (model.conv.weight[~keep] == 0).all() and (model.conv.weight[keep] != 0).all()
    alpha = masks.scales["fc.weight"]
    assert on_levels(model.fc.weight, Quantization(bits=3), alpha, masks["fc.weight"])


# ---- attach: pruned weights stay exactly zero ----------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_despite_momentum_already_in_the_optimizer(name):
    model, (x, y) = toy(), data()
    opt = OPTIMIZERS[name](model.parameters())
    for _ in range(3):  # dense steps: the optimizer state is nonzero everywhere
        step(model, opt, x, y)
    masks = toy_masks(model)
    for pname, p in model.named_parameters():
        if pname in masks:
            state = opt.state[p]
            buf = state["momentum_buffer"] if "momentum_buffer" in state else state["exp_avg"]
            assert (buf[~masks[pname]] != 0).all()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert masks.attach(model) is masks
    for _ in range(4):
        step(model, opt, x, y)
        for pname, p in model.named_parameters():
            if pname in masks:
                assert (p[~masks[pname]] == 0).all(), pname
                assert (p.grad[~masks[pname]] == 0).all(), pname
    for pname, p in model.named_parameters():
        keep = masks[pname] if pname in masks else torch.ones_like(p, dtype=torch.bool)
        changed = (p.detach() != before[pname])[keep].float().mean()
        assert changed > 0.9, pname  # kept entries (and unmasked biases) still train
    masks.detach()


def test_without_masks_the_same_momentum_revives_pruned_weights():
    """Control for the test above: masking the weights once is not enough."""
    model, (x, y) = toy(), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        step(model, opt, x, y)
    masks = toy_masks(model)
    masks.apply(model)
    step(model, opt, x, y)
    assert (model.fc.weight[~masks["fc.weight"]] != 0).any()


# ---- attach: quantized layers (STE) -------------------------------------------------------


def test_quantized_weights_are_on_their_levels_at_every_forward_and_latent_trains():
    model, (x, y) = toy(), data()
    masks = toy_masks(model, quantized=True).attach(model)
    q, keep, alpha = Quantization(bits=3), masks["fc.weight"], masks.scales["fc.weight"]
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(on_levels(m.weight, q, alpha, keep)))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    latent0 = masks.state_dict()["state"]["fc.weight"]["latent"]
    values0 = model.fc.weight.detach().clone()
    for _ in range(5):
        step(model, opt, x, y)
        assert on_levels(model.fc.weight, q, alpha, keep)  # after the step too
    latent = masks.state_dict()["state"]["fc.weight"]["latent"]
    assert seen == [True] * 5
    assert not torch.equal(latent, latent0)  # the optimizer moved the float latent
    assert (latent[~keep] == 0).all()
    assert not torch.equal(model.fc.weight, values0)  # and some entries changed level
    masks.detach()
    assert on_levels(model.fc.weight, q, alpha, keep)
    assert (model.conv.weight[~masks["conv.weight"]] == 0).all()


def test_ste_learns_a_quantized_sparse_regression():
    torch.manual_seed(0)
    x = torch.randn(256, 16)
    teacher = torch.randn(1, 16) * (torch.rand(1, 16) < 0.5)
    y = x @ teacher.T  # (256, 1)
    model = nn.Sequential(nn.Linear(16, 1, bias=False))
    keep, one = teacher != 0, torch.tensor(1.0)
    # α fixed so that the grid α·{-7, …, 7} covers the teacher's weights
    masks = Masks({"0.weight": keep}, {"0.weight": Quantization(bits=4)}, {"0.weight": 0.3 * one})
    masks.attach(model)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    masks.detach()
    assert losses[-1] < 0.05 * losses[0]
    assert (model[0].weight[~keep] == 0).all()


def test_eval_forwards_between_steps_change_nothing():
    """Eval-mode and no-backward forwards must not overwrite the latent weights."""

    def run(with_evals: bool) -> tuple[dict[str, torch.Tensor], Masks]:
        model, (x, y) = toy(), data()
        masks = toy_masks(model, quantized=True).attach(model)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(4):
            step(model, opt, x, y)
            if with_evals:
                model.eval()
                with torch.no_grad():
                    model(x)
                model.train()
                model(x)  # a training-mode forward that is never backpropagated
        return {k: v.clone() for k, v in model.state_dict().items()}, masks

    plain, m1 = run(False)
    evals, m2 = run(True)
    for k in plain:
        assert torch.equal(plain[k], evals[k]), k
    assert torch.equal(
        m1.state_dict()["state"]["fc.weight"]["latent"],
        m2.state_dict()["state"]["fc.weight"]["latent"],
    )


def test_gradient_accumulation_over_two_backwards():
    model, (x, y) = toy(), data()
    masks = toy_masks(model, quantized=True).attach(model)
    q, keep, alpha = Quantization(bits=3), masks["fc.weight"], masks.scales["fc.weight"]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        for half in (slice(0, 8), slice(8, 16)):
            nn.functional.cross_entropy(model(x[half]), y[half]).backward()
        opt.step()
        assert on_levels(model.fc.weight, q, alpha, keep)
    masks.detach()


def test_updates_outside_torch_optim_are_projected_before_the_next_forward():
    model, (x, y) = toy(), data()
    masks = toy_masks(model, quantized=True).attach(model)
    q, keep, alpha = Quantization(bits=3), masks["fc.weight"], masks.scales["fc.weight"]
    seen = []
    model.fc.register_forward_hook(lambda m, i, o: seen.append(on_levels(m.weight, q, alpha, keep)))
    for _ in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad  # a hand-written SGD step: no optimizer hook runs
    model(x)
    assert seen == [True] * 4
    assert (model.conv.weight[~masks["conv.weight"]] == 0).all()
    masks.detach()
    assert on_levels(model.fc.weight, q, alpha, keep)


def test_resnet20_end_to_end():
    torch.manual_seed(0)
    model = models.create("resnet20")
    plan = dp.Plan({"fc": Sparsity(0.5) & Quantization(bits=4)}, default=Sparsity(0.7))
    constraints = plan.resolve(model)
    masks = Masks.from_constraints(model, constraints)
    with torch.no_grad():
        for name, c in constraints.items():
            w = model.get_submodule(name).weight
            w.copy_(c.project(w))
    masks.attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    x, y = torch.randn(2, 3, 8, 8), torch.randint(0, 10, (2,))  # any size: adaptive pooling
    step(model, opt, x, y)  # one step: the first steps of a ResNet on CPU are slow (oneDNN setup)
    masks.detach()
    params = dict(model.named_parameters())
    for name in masks.names:
        assert (params[name][~masks[name]] == 0).all(), name
    assert on_levels(params["fc.weight"], Quantization(bits=4), masks.scales["fc.weight"],
                     masks["fc.weight"])  # fmt: skip
    assert abs(masks.sparsity()["layer2.0.conv1.weight"] - 0.7) < 1e-3
    assert 0.69 < masks.sparsity()["total"] < 0.71


# ---- attach twice, detach ------------------------------------------------------------------


def test_attach_twice_is_a_no_op_and_another_model_is_refused():
    model, other = toy(), toy()
    masks = toy_masks(model)
    hooks = len(_global_optimizer_post_hooks)
    masks.attach(model)
    assert masks.attach(model) is masks
    assert len(model.conv._forward_pre_hooks) == 1
    assert len(model.conv.weight._post_accumulate_grad_hooks) == 1
    assert len(_global_optimizer_post_hooks) == hooks + 1
    assert "attached to Toy" in repr(masks)
    with raises(ConfigError, "already attached to a Toy", "detach()"):
        masks.attach(other)
    with raises(ConfigError, "attached to another Toy"):
        masks.detach(other)
    masks.detach(model)
    assert len(_global_optimizer_post_hooks) == hooks


def test_detach_removes_every_hook_and_is_idempotent():
    model, (x, y) = toy(), data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        step(model, opt, x, y)
    masks = toy_masks(model, quantized=True).attach(model)
    step(model, opt, x, y)
    model.zero_grad()
    model(x).sum().backward()  # detach between backward and step: W holds the latent
    masks.detach()
    keep = masks["fc.weight"]
    assert on_levels(model.fc.weight, Quantization(bits=3), masks.scales["fc.weight"], keep)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    masks.detach()
    masks.detach(model)
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())
    assert not model.conv._forward_pre_hooks and not model.fc._forward_pre_hooks
    assert not model.fc.weight._post_accumulate_grad_hooks
    step(model, opt, x, y)  # no hooks: Adam's momentum moves pruned weights again
    assert (model.fc.weight[~keep] != 0).any()
    assert (model.conv.weight[~masks["conv.weight"]] != 0).any()


def test_load_state_dict_into_the_model_while_attached_is_projected():
    model = toy()
    masks = toy_masks(model).attach(model)
    model.load_state_dict(toy(seed=5).state_dict())  # dense weights written in place
    model(data()[0])
    assert (model.fc.weight[~masks["fc.weight"]] == 0).all()
    masks.apply(model)  # attached: a no-op once in S
    masks.detach()


# ---- state ---------------------------------------------------------------------------------


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = toy()
    masks = Masks(
        {"conv.weight": random_mask((6, 3, 3, 3)), "fc.weight": random_mask((5, 96), seed=4)},
        {"fc.weight": Quantization(levels=[-1, -0.25, 0, 0.5, 1], scale="channel")},
    )
    masks.apply(model)  # fits the scales
    path = tmp_path / "masks.safetensors"
    masks.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["masks.safetensors"]  # no temp file left
    loaded = Masks.load(path)
    assert loaded.names == masks.names
    for name in masks.names:
        assert loaded[name].dtype == torch.bool and torch.equal(loaded[name], masks[name])
    s0, s1 = masks.scales["fc.weight"], loaded.scales["fc.weight"]
    assert s1.dtype == s0.dtype and s1.shape == (5, 1) and torch.equal(s1, s0)
    assert loaded.quantizers == masks.quantizers
    assert loaded.quantizers["fc.weight"].to_dict() == masks.quantizers["fc.weight"].to_dict()
    before = model.state_dict()["fc.weight"].clone()
    loaded.apply(model)
    assert torch.equal(model.fc.weight, before)


def test_state_dict_resume_is_exact_including_latent_weights():
    x, y = data()

    def make() -> tuple[Toy, torch.optim.Optimizer]:
        model = toy()
        return model, torch.optim.Adam(model.parameters(), lr=1e-2)

    model, opt = make()
    masks = toy_masks(model, quantized=True).attach(model)
    for _ in range(3):
        step(model, opt, x, y)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "masks": masks.state_dict()},
               buf)  # fmt: skip
    for _ in range(3):
        step(model, opt, x, y)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    assert ckpt["masks"]["format"] == FORMAT
    model2, opt2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    masks2 = Masks({})
    masks2.load_state_dict(ckpt["masks"])
    masks2.attach(model2)
    for _ in range(3):
        step(model2, opt2, x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k
    masks.detach()
    with raises(ConfigError, "detach() first"):
        masks2.load_state_dict(ckpt["masks"])


# ---- errors users can cause ---------------------------------------------------------------


def test_unknown_parameter_name_suggests_and_lists():
    masks = Masks({"fc.wieght": torch.ones(5, 96, dtype=torch.bool)})
    with raises(ConfigError, "'fc.wieght'", "no parameter of Toy", "did you mean 'fc.weight'",
                "parameters: conv.weight, conv.bias, fc.weight, fc.bias"):  # fmt: skip
        masks.attach(toy())


def test_mask_shape_mismatch_names_both_shapes():
    masks = Masks({"fc.weight": torch.ones(96, 5, dtype=torch.bool)})
    with raises(ConfigError, "'fc.weight'", "96×5", "5×96"):
        masks.apply(toy())


def test_attach_checks_everything_before_registering_a_hook():
    model = toy()
    conv = model.conv.weight.detach().clone()
    masks = Masks(
        {
            "conv.weight": torch.zeros(6, 3, 3, 3, dtype=torch.bool),  # fine: would zero conv
            "fc.weight": torch.ones(5, 95, dtype=torch.bool),  # wrong shape
        }
    )
    with raises(ConfigError, "5×95"):
        masks.attach(model)
    assert not model.conv._forward_pre_hooks and not model.conv.weight._post_accumulate_grad_hooks
    assert torch.equal(model.conv.weight, conv)
    assert "attached" not in repr(masks)


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [(torch.ones(3), "dtype torch.float32"), (torch.ones(3, dtype=torch.uint8), "torch.uint8"),
     ([True, False], "list")],
)  # fmt: skip
def test_non_bool_mask(mask, fragment):
    with raises(ConfigError, "mask 'fc.weight'", fragment, "bool", "m.bool()"):
        Masks({"fc.weight": mask})


def test_bad_quantizers_and_scales():
    keep = {"fc.weight": torch.ones(5, 96, dtype=torch.bool)}
    with raises(ConfigError, "quantizer given for 'fc.wieght' but it has no mask"):
        Masks(keep, {"fc.wieght": Quantization(bits=3)})
    with raises(ConfigError, "not a Quantization", ".value"):
        Masks(keep, {"fc.weight": Sparsity(0.5) & Quantization(bits=3)})  # type: ignore[dict-item]
    with raises(ConfigError, "scales given for 'fc.weight' but it has no quantizer"):
        Masks(keep, None, {"fc.weight": torch.tensor(0.1)})
    q = {"fc.weight": Quantization(bits=3, scale="channel")}
    with raises(ConfigError, "scales of 'fc.weight' are scalar", "shape (5, 1)"):
        Masks(keep, q, {"fc.weight": torch.tensor(0.1)})
    with raises(ConfigError, "finite and >= 0"):
        Masks(keep, q, {"fc.weight": -torch.ones(5, 1)})
    with raises(ConfigError, "mask name 'total' is not allowed"):
        Masks({"total": torch.ones(2, dtype=torch.bool)})
    with raises(UnknownNameError, "no mask for 'fc'", "known: fc.weight"):
        Masks(keep)["fc"]


def test_from_constraints_errors():
    model = toy()
    with raises(ConfigError, "'fcc' is not a module with a weight", "did you mean 'fc'",
                "layers: conv, fc"):  # fmt: skip
        Masks.from_constraints(model, {"fcc": Sparsity(0.5)})
    with raises(ConfigError, "constraint of 'fc' is 0.5, not a Constraint"):
        Masks.from_constraints(model, {"fc": 0.5})  # type: ignore[dict-item]
    with raises(ConstraintError, "'fc.weight'"):
        Masks.from_constraints(model, {"fc": Sparsity(0.5, "nm", m=7)})


def test_missing_corrupt_and_foreign_files(tmp_path):
    with raises(CheckpointError, "masks file", "nope.safetensors", "does not exist"):
        Masks.load(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a safetensors file at all")
    with raises(CheckpointError, "garbage.safetensors", "truncated or corrupt"):
        Masks.load(garbage)
    good = tmp_path / "good.safetensors"
    toy_masks(toy()).save(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-20])
    with raises(CheckpointError, "cut.safetensors", "truncated or corrupt"):
        Masks.load(cut)
    from safetensors.torch import save_file

    foreign = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with raises(CheckpointError, "model.safetensors", "not a dualprune masks file"):
        Masks.load(foreign)
    with raises(CheckpointError, "masks state_dict", "format"):
        Masks({}).load_state_dict({"state": {}})


def test_loaded_masks_that_do_not_fit_name_the_file(tmp_path):
    path = tmp_path / "m.safetensors"
    Masks({"fc.weight": torch.ones(5, 96, dtype=torch.bool)}).save(path)
    model = nn.Sequential(nn.Linear(96, 5))
    with raises(CheckpointError, f"masks file '{path}'", "'fc.weight'", "did you mean '0.weight'"):
        Masks.load(path).attach(model)
