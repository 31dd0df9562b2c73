"""One test per error a user can cause; every message is one line naming value and fix."""

from __future__ import annotations

import pytest
import torch

from dualprune.constraints import Quantization, Sparsity, from_dict
from dualprune.errors import ConstraintError, UnknownNameError


def raises(exc, *fragments):
    """Context manager: ``exc`` with a one-line message containing every fragment."""

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(exc)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *args):
            handled = self.ctx.__exit__(*args)
            if not handled:
                return False
            msg = str(self.info.value)
            assert "\n" not in msg, msg
            for f in fragments:
                assert f in msg, (f, msg)
            return handled

    return _Check()


# ---- Sparsity construction ------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", True, None])
def test_ratio_outside_unit_interval(ratio):
    with raises(ConstraintError, "ratio=", "[0, 1)"):
        Sparsity(ratio)


def test_unknown_structure_lists_known_ones():
    with raises(UnknownNameError, "'fliter'", "did you mean 'filter'", "irregular", "tile_cols"):
        Sparsity(0.5, "fliter")


def test_option_typo_lists_allowed_options():
    with raises(ConstraintError, "'blok'", "did you mean 'block'", "allowed options: block"):
        Sparsity(0.5, "block", blok=(4, 4))


def test_option_on_a_structure_without_options():
    with raises(ConstraintError, "Sparsity(column) has no option 'm'", "allowed options: none"):
        Sparsity(0.5, "column", m=4)
    with raises(ConstraintError, "Sparsity(filter) has no option 'm'", "options: multiple_of"):
        Sparsity(0.5, "filter", m=4)


@pytest.mark.parametrize("value", [0, -8, 2.5, 2.0, "8", True, None])
@pytest.mark.parametrize("structure", ["filter", "channel"])
def test_bad_multiple_of(structure, value):
    with raises(ConstraintError, f"multiple_of={value!r} is not allowed", "a positive int"):
        Sparsity(0.5, structure, multiple_of=value)


@pytest.mark.parametrize("block", [(0, 4), (4,), "4x4", (2.5, 2), (-1, 3)])
def test_bad_block_value(block):
    with raises(ConstraintError, "block=", "two positive ints"):
        Sparsity(0.5, "block", block=block)


def test_block_larger_than_gemm_view():
    c = Sparsity(0.5, "block", block=(128, 128))
    with raises(
        ConstraintError, "'layer1.0.conv1.weight' (64×64×1×1)", "64×64 GEMM view", "at most 64×64"
    ):
        c.check(torch.Size([64, 64, 1, 1]), "layer1.0.conv1.weight")
    with raises(ConstraintError, "larger than its"):
        Sparsity(0.5, "tile_rows", block=(8, 8)).project(torch.randn(4, 16))


def test_nm_m_not_dividing_inputs():
    with raises(
        ConstraintError,
        "Sparsity(nm, n=2, m=4) cannot apply to 'fc.weight' (10×7)",
        "7 inputs is not a multiple of m=4",
        "pick m dividing 7",
    ):
        Sparsity(0.5, "nm", n=2, m=4).check(torch.randn(10, 7), "fc.weight")


@pytest.mark.parametrize(("opts", "key"), [({"m": 0}, "m=0"), ({"n": 5, "m": 4}, "n=5")])
def test_nm_bad_n_or_m(opts, key):
    with raises(ConstraintError, key):
        Sparsity(0.5, "nm", **opts)


def test_pattern_on_kernels_of_the_wrong_size():
    with raises(ConstraintError, "'conv1.weight' (64×3×7×7)", "7×7 kernels", "3×3 kernels"):
        Sparsity(0.6, "pattern").check((64, 3, 7, 7), "conv1.weight")


def test_pattern_on_a_linear_weight():
    with raises(ConstraintError, "'fc.weight'", "no kernels (Linear)"):
        Sparsity(0.6, "pattern").check((10, 20), "fc.weight")


@pytest.mark.parametrize(
    ("opts", "key"),
    [
        ({"p": 10}, "p=10"),
        ({"p": 0}, "p=0"),
        ({"kernels": 1.0}, "kernels=1.0"),
        ({"kernel": (2, 2)}, "odd sizes"),
        ({"kernel": "3x3"}, "kernel="),
        ({"library": []}, "library="),
        ({"library": [[0, 9]]}, "library="),
        ({"library": [[0, 0]]}, "library="),
        ({"library": [[0, 1], [0, 1, 2]]}, "one size"),
        ({"library": [[0, 1]], "p": 3}, "one size"),
    ],
)
def test_pattern_bad_options(opts, key):
    with raises(ConstraintError, key):
        Sparsity(0.6, "pattern", **opts)


def test_channel_on_a_depthwise_conv():
    with raises(ConstraintError, "'dw.weight' (32×1×3×3)", "single input channel", "'filter'"):
        Sparsity(0.5, "channel").check((32, 1, 3, 3), "dw.weight")


def test_weight_without_input_dimension():
    with raises(ConstraintError, "'bn.weight' (64)", "Linear or Conv weight"):
        Sparsity(0.5, "filter").check(torch.randn(64), "bn.weight")


def test_group_scores_on_a_local_structure():
    with raises(ConstraintError, "no global group scores", "irregular"):
        Sparsity(0.5, "nm").group_scores(torch.randn(4, 8))


# ---- Quantization construction --------------------------------------------------------


@pytest.mark.parametrize("bits", [0, -3, 2.5, "4", True])
def test_bits_below_one_or_not_an_int(bits):
    with raises(ConstraintError, "bits=", "int >= 1"):
        Quantization(bits=bits)


def test_no_level_set():
    with raises(ConstraintError, "needs a level set", "bits="):
        Quantization()


def test_unknown_level_name():
    with raises(UnknownNameError, "'ternery'", "did you mean 'ternary'", "binary, pow2, ternary"):
        Quantization(levels="ternery")


@pytest.mark.parametrize("levels", [[1.0], [2, 2], [0, float("inf")], ["a", "b"], 3])
def test_bad_level_list(levels):
    with raises(ConstraintError, "levels"):
        Quantization(levels=levels)


def test_bits_with_a_level_list():
    with raises(ConstraintError, "implied by the level list"):
        Quantization(bits=3, levels=[0, 1, 2])


def test_bits_contradicting_binary():
    with raises(ConstraintError, "binary levels are 1-bit", "bits=1"):
        Quantization(bits=3, levels="binary")


def test_too_many_bits():
    with raises(ConstraintError, "bits=17", "bits <= 16"):
        Quantization(bits=17)
    with raises(ConstraintError, "bits=9", "bits <= 8"):
        Quantization(bits=9, levels="pow2")


def test_pow2_needs_a_sign_bit():
    with raises(ConstraintError, "bits >= 2"):
        Quantization(bits=1, levels="pow2")


def test_bad_scale_mode():
    with raises(ConstraintError, "scale='layer'", "tensor, channel, none"):
        Quantization(bits=4, scale="layer")


def test_quantization_of_a_scalar():
    with raises(ConstraintError, "'s'", "at least one dimension"):
        Quantization(bits=4).check(torch.tensor(1.0), "s")


def test_mask_of_the_wrong_shape():
    with raises(ConstraintError, "mask of shape 2×2"):
        Quantization(bits=4).project(torch.randn(3, 3), mask=torch.ones(2, 2, dtype=torch.bool))


# ---- intersections and plain data -----------------------------------------------------


def test_two_quantizations_in_one_intersection():
    with raises(ConstraintError, "2 quantizations", "keep one"):
        Sparsity(0.5) & Quantization(bits=4) & Quantization(levels="binary")


def test_codes_of_an_intersection_without_quantization():
    with raises(ConstraintError, "no quantization part"):
        (Sparsity(0.5) & Sparsity(0.5, "filter")).codes(torch.randn(4, 4))


def test_with_ratio_needs_one_sparsity_part():
    with raises(ConstraintError, "exactly one sparsity part"):
        (Sparsity(0.5) & Sparsity(0.5, "filter")).with_ratio(0.3)


def test_from_dict_unknown_type():
    with raises(UnknownNameError, "'sparse'", "did you mean 'sparsity'", "intersection"):
        from_dict({"type": "sparse", "ratio": 0.5})


def test_from_dict_unknown_structure():
    with raises(UnknownNameError, "'colum'", "column"):
        from_dict({"type": "sparsity", "ratio": 0.5, "structure": "colum"})


def test_from_dict_missing_ratio():
    with raises(ConstraintError, "has no 'ratio'"):
        from_dict({"type": "sparsity", "structure": "filter"})


def test_from_dict_quantization_typo():
    with raises(ConstraintError, "'bit'", "did you mean 'bits'"):
        from_dict({"type": "quantization", "bit": 4})


@pytest.mark.parametrize("spec", [[1, 2], {"type": "intersection", "parts": [{}]}])
def test_from_dict_malformed(spec):
    with raises(ConstraintError):
        from_dict(spec)
