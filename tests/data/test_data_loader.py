"""Loader: batches, normalisation, crop + flip properties, per-epoch determinism."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dualprune.data import Loader, epoch_generator, random_crop_flip
from dualprune.errors import ConfigError

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def toy(n: int = 50, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images; the label of sample i is i, so batches reveal which samples."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    return x, torch.arange(n)


def make(x, y, **kw) -> Loader:
    opts = {"batch_size": 16, "mean": MEAN, "std": STD, "shuffle": True, "augment": True}
    return Loader(x, y, **(opts | kw))


def batches(loader: Loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader)


def unnormalize(xb: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return ((xb * s + m) * 255).round().to(torch.uint8)


def test_shapes_len_and_coverage() -> None:
    x, y = toy(50)
    loader = make(x, y)
    got = batches(loader)
    assert len(loader) == len(got) == 4 and loader.num_samples == 50
    assert [len(b) for _, b in got] == [16, 16, 16, 2]
    xb, yb = got[0]
    assert xb.dtype == torch.float32 and xb.shape == (16, 3, 32, 32) and yb.dtype == torch.int64
    assert sorted(torch.cat([b for _, b in got]).tolist()) == list(range(50))  # each once
    dropped = make(x, y, drop_last=True)
    assert len(dropped) == 3 and [len(b) for _, b in dropped] == [16, 16, 16]


def test_normalisation_in_order() -> None:
    x, y = toy(20)
    loader = make(x, y, shuffle=False, augment=False, batch_size=7)
    xs, ys = zip(*loader, strict=True)
    assert torch.cat(ys).tolist() == list(range(20))
    expected = (x.double() / 255 - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / (
        torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    )
    torch.testing.assert_close(torch.cat(xs).double(), expected, atol=1e-5, rtol=0)


def test_no_augmentation_returns_the_images() -> None:
    x, y = toy(30)
    for xb, yb in make(x, y, augment=False):
        assert torch.equal(unnormalize(xb), x[yb])


def windows(img: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop (and its mirror) of ``img`` zero-padded by ``pad``."""
    _, h, w = img.shape
    padded = F.pad(img, (pad,) * 4)
    out = []
    for dy, dx in itertools.product(range(2 * pad + 1), repeat=2):
        crop = padded[:, dy : dy + h, dx : dx + w]
        out += [crop, crop.flip(-1)]
    return out


def test_crop_is_a_window_of_the_padded_image() -> None:
    x, y = toy(40)
    seen_flip = seen_shift = False
    for xb, yb in make(x, y):
        for img, i in zip(unnormalize(xb), yb.tolist(), strict=True):
            matches = [k for k, win in enumerate(windows(x[i], 4)) if torch.equal(win, img)]
            assert len(matches) == 1  # exactly one (offset, flip) explains it
            seen_flip |= matches[0] % 2 == 1
            seen_shift |= matches[0] // 2 != 40  # 40 = the centred window (4, 4)
    assert seen_flip and seen_shift


def test_shift_without_flip_never_mirrors() -> None:
    x, y = toy(40, size=12)
    seen_shift = False
    for xb, yb in make(x, y, flip=False, pad=2):
        for img, i in zip(unnormalize(xb), yb.tolist(), strict=True):
            matches = [k for k, win in enumerate(windows(x[i], 2)) if torch.equal(win, img)]
            assert len(matches) == 1 and matches[0] % 2 == 0  # an unmirrored window
            seen_shift |= matches[0] // 2 != 12  # 12 = the centred window (2, 2)
    assert seen_shift


def test_augmentation_varies_per_sample() -> None:
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    x = img.expand(64, -1, -1, -1).contiguous()
    xb, _ = next(iter(make(x, torch.zeros(64, dtype=torch.int64), batch_size=64)))
    distinct = {tuple(v.flatten().tolist()[:200]) for v in unnormalize(xb)}
    assert len(distinct) > 20


def test_random_crop_flip_unit() -> None:
    x, _ = toy(4, size=8)
    zero = torch.zeros(4, 2, dtype=torch.int64)
    no, yes = torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    assert torch.equal(random_crop_flip(x, zero + 2, no, 2), x)  # centred crop = identity
    assert torch.equal(random_crop_flip(x, zero + 2, yes, 2), x.flip(-1))
    corner = random_crop_flip(x, zero, no, 2)  # top-left window: 2 rows/cols of zeros
    assert corner[:, :, :2].eq(0).all() and corner[:, :, :, :2].eq(0).all()
    assert torch.equal(corner[:, :, 2:, 2:], x[:, :, :6, :6])
    shifts = torch.tensor([[0, 4], [4, 0], [1, 3], [2, 2]])
    out = random_crop_flip(x.float(), shifts, torch.tensor([True, False, True, False]), 2)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out[3], x[3].float())


def test_flip_rate_is_one_half() -> None:
    x = torch.arange(8, dtype=torch.uint8).view(1, 1, 1, 8).expand(4000, 1, 1, 8).contiguous()
    loader = make(
        x, torch.zeros(4000, dtype=torch.int64), batch_size=4000, mean=(0.0,), std=(1 / 255,), pad=0
    )
    xb, _ = next(iter(loader))
    flipped = (xb[:, 0, 0, 0] == 7).float().mean().item()
    assert 0.45 < flipped < 0.55


def test_same_seed_same_batches() -> None:
    x, y = toy(50)
    a, b = batches(make(x, y, seed=3)), batches(make(x, y, seed=3))
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(a, b, strict=True)
    )
    c = batches(make(x, y, seed=4))
    assert not torch.equal(a[0][1], c[0][1])


def test_set_epoch_changes_batches_and_resumes_exactly() -> None:
    x, y = toy(50)
    run = make(x, y, seed=1)
    epochs = []
    for epoch in range(3):
        run.set_epoch(epoch)
        epochs.append(batches(run))
    assert not torch.equal(epochs[0][0][1], epochs[1][0][1])
    resumed = make(x, y, seed=1)
    resumed.set_epoch(2)
    for (xa, ya), (xb, yb) in zip(epochs[2], batches(resumed), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_full_pass_advances_epoch() -> None:
    x, y = toy(50)
    auto = make(x, y, seed=5)
    batches(auto)
    assert auto.epoch == 1
    second = batches(auto)
    manual = make(x, y, seed=5)
    manual.set_epoch(1)
    assert torch.equal(second[0][0], batches(manual)[0][0])


def test_global_rng_untouched_and_ignored() -> None:
    x, y = toy(50)
    state = torch.get_rng_state()
    first = batches(make(x, y, seed=2))
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(12345)
    again = batches(make(x, y, seed=2))
    assert torch.equal(first[0][0], again[0][0])


def test_epoch_generator_streams_differ() -> None:
    draws = {
        tuple(torch.randint(0, 10**9, (4,), generator=epoch_generator(s, e)).tolist())
        for s in (0, 1, -1)
        for e in (0, 1)
    }
    assert len(draws) == 6


def test_grayscale_and_device() -> None:
    x = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    loader = Loader(
        x,
        torch.arange(10),
        batch_size=4,
        mean=(0.1307,),
        std=(0.3081,),
        shuffle=False,
        augment=False,
        device="cpu",
    )
    xb, _ = next(iter(loader))
    assert xb.shape == (4, 1, 28, 28) and xb.device.type == "cpu"
    assert "batches=3" in repr(loader)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size=0 must be a positive integer"),
        ({"batch_size": 2.5}, "batch_size=2.5 must be a positive integer"),
        ({"mean": (0.5,)}, r"need 3 values each"),
        ({"std": (0.1, 0.0, 0.2)}, r"std > 0"),
        ({"pad": -1}, "pad=-1"),
    ],
)
def test_bad_options(kwargs, match: str) -> None:
    x, y = toy(8)
    with pytest.raises(ConfigError, match=match):
        make(x, y, **kwargs)


def test_bad_tensors_and_epoch() -> None:
    x, y = toy(8)
    with pytest.raises(ConfigError, match="needs uint8 images"):
        make(x.float(), y)
    with pytest.raises(ConfigError, match=r"labels of shape \(8,\)"):
        make(x, y[:5])
    with pytest.raises(ConfigError, match="epoch=-1 must be an integer"):
        make(x, y).set_epoch(-1)
