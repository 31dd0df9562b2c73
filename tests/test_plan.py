"""Plan: pattern matching, exclusions and defaults, YAML round trip, global budgets, errors."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from dualprune.constraints import Intersection, Quantization, Sparsity
from dualprune.constraints.budget import allocate
from dualprune.errors import ConstraintError, PlanError, UnknownNameError
from dualprune.plan import Plan, prunable_layers


class Net(nn.Module):
    """conv1, bn1, conv2, features.0 (Conv1d), fc1, fc2: five prunable layers and a BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(nn.Conv1d(16, 8, 3), nn.ReLU())
        self.fc1 = nn.Linear(256, 120)
        self.fc2 = nn.Linear(120, 10)


YAML = """
layers:
  "conv*": {type: sparsity, ratio: 0.8, structure: filter}
  "fc1": [{type: sparsity, ratio: 0.99}, {type: quantization, bits: 3}]   # a list = intersection
exclude: ["fc2"]
"""

A, B = Sparsity(0.5), Sparsity(0.7, "filter")


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net()


# ---- matching ----------------------------------------------------------------------------


def test_targets_are_conv_and_linear_weights_keyed_by_module_name(net):
    assert list(prunable_layers(net)) == ["conv1", "conv2", "features.0", "fc1", "fc2"]
    assert list(Plan(default=A).resolve(net)) == list(prunable_layers(net))


def test_first_matching_pattern_wins_and_keys_follow_model_order(net):
    resolved = Plan({"fc*": B, "conv1": B, "conv*": A}).resolve(net)
    assert list(resolved) == ["conv1", "conv2", "fc1", "fc2"]
    assert resolved == {"conv1": B, "conv2": A, "fc1": B, "fc2": B}


def test_glob_crosses_dots_and_regex_must_match_the_whole_name(net):
    assert list(Plan({"feat*": A}).resolve(net)) == ["features.0"]
    assert list(Plan({"re:conv\\d": A}).resolve(net)) == ["conv1", "conv2"]
    assert list(Plan({"re:fc[12]|features\\..*": A}).resolve(net)) == ["features.0", "fc1", "fc2"]
    with pytest.raises(PlanError, match="'re:conv' matches no"):
        Plan({"re:conv": A}).resolve(net)  # fullmatch, not search


def test_glob_is_case_sensitive(net):
    with pytest.raises(PlanError, match="'FC1' matches no"):
        Plan({"FC1": A}).resolve(net)


def test_exclude_beats_patterns_and_default_covers_the_rest(net):
    resolved = Plan({"fc*": B}, exclude=["conv1", "fc2"], default=A).resolve(net)
    assert resolved == {"conv2": A, "features.0": A, "fc1": B}
    assert Plan({"conv*": A}, exclude="conv2").resolve(net) == {"conv1": A}


def test_resolve_runs_every_check_at_plan_time(net):
    plan = Plan({"conv*": Sparsity(0.5, "pattern", kernel=(5, 5), library=[[0, 12]])})
    assert set(plan.resolve(net)) == {"conv1", "conv2"}


# ---- plain data --------------------------------------------------------------------------


def test_yaml_example_resolves(net):
    plan = Plan.from_yaml(YAML)
    resolved = plan.resolve(net)
    assert list(resolved) == ["conv1", "conv2", "fc1"]
    assert resolved["conv1"] == Sparsity(0.8, "filter")
    assert isinstance(resolved["fc1"], Intersection)
    assert resolved["fc1"] == Sparsity(0.99) & Quantization(bits=3)


def test_yaml_round_trip_and_intersections_as_lists():
    plan = Plan.from_yaml(YAML)
    data = plan.to_dict()
    assert data["exclude"] == ["fc2"]
    assert [p["type"] for p in data["layers"]["fc1"]] == ["sparsity", "quantization"]
    assert Plan.from_yaml(plan.to_yaml()) == plan
    assert Plan.from_dict(data) == plan
    assert Plan.from_dict({"layers": {"x": Sparsity(0.5)}}) == Plan({"x": Sparsity(0.5)})


def test_from_yaml_reads_files_and_one_line_text(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text(YAML)
    assert Plan.from_yaml(path) == Plan.from_yaml(str(path)) == Plan.from_yaml(YAML)
    flow = "{layers: {" + ", ".join(f"fc{i}: {{type: sparsity, ratio: 0.5}}" for i in range(20))
    assert len(Plan.from_yaml(flow + "}}").mapping) == 20  # longer than any file name


_patterns = st.text(alphabet="abc*?.01_", min_size=1, max_size=6)
_constraints = st.one_of(
    st.builds(
        Sparsity,
        st.floats(0, 0.99, allow_nan=False),
        st.sampled_from(["irregular", "filter", "channel", "column"]),
    ),
    st.builds(lambda b: Quantization(bits=b), st.integers(1, 8)),
    st.builds(
        lambda r, b: Sparsity(r, "nm", m=4) & Quantization(bits=b),
        st.floats(0, 0.9, allow_nan=False),
        st.integers(2, 8),
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    mapping=st.dictionaries(_patterns, _constraints, max_size=4),
    exclude=st.lists(_patterns, max_size=2),
    default=st.none() | _constraints,
)
def test_yaml_round_trip_of_any_plan(mapping, exclude, default):
    plan = Plan(mapping, exclude=exclude, default=default)
    again = Plan.from_yaml(plan.to_yaml())
    assert again == plan
    assert list(again.mapping) == list(plan.mapping)  # order kept: first match wins


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.text(alphabet="ab*?[]x", min_size=1, max_size=4), min_size=1, max_size=4, unique=True
    )
)
def test_global_plans_name_layers_exactly_even_with_glob_characters(names):
    model = nn.Module()
    for name in names:
        model.add_module(name, nn.Linear(4, 3))
    plan = Plan.global_(Sparsity(0.5), model)
    assert list(plan.resolve(model)) == names
    assert Plan.from_yaml(plan.to_yaml()).resolve(model) == plan.resolve(model)


# ---- global budget -----------------------------------------------------------------------

_SHAPES = [(4, 3), (6, 2, 3, 3), (5, 8), (3, 4, 1, 1), (2, 2), (7, 5, 3)]


@st.composite
def _weights(draw) -> dict[str, torch.Tensor]:
    shapes = draw(st.lists(st.sampled_from(_SHAPES), min_size=1, max_size=4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    return {f"layer{i}": torch.randn(s, generator=g) * (i + 1) for i, s in enumerate(shapes)}


@settings(max_examples=150, deadline=None)
@given(
    weights=_weights(),
    ratio=st.floats(0, 0.95),
    floor=st.floats(0, 0.6),
    span=st.floats(0, 0.6),
)
def test_global_irregular_budget_is_exact_within_floor_and_ceiling(weights, ratio, floor, span):
    ceiling = min(0.99, floor + span)
    counts = [w.numel() for w in weights.values()]
    total, target = sum(counts), round(ratio * sum(counts))
    lo = [math.ceil(Fraction(floor) * n) for n in counts]
    hi = [math.floor(Fraction(ceiling) * n) for n in counts]
    if any(a > b for a, b in zip(lo, hi, strict=True)):
        with pytest.raises(ConstraintError, match="no whole number of them"):
            allocate(weights, Sparsity(ratio), floor, ceiling)
        return
    if not sum(lo) <= target <= sum(hi):
        with pytest.raises(ConstraintError, match="cannot be met"):
            allocate(weights, Sparsity(ratio), floor, ceiling)
        return
    ratios = allocate(weights, Sparsity(ratio), floor, ceiling)
    assert ratios == allocate(weights, Sparsity(ratio), floor, ceiling)  # deterministic
    kept = 0
    for (name, w), n in zip(weights.items(), counts, strict=True):
        r = ratios[name]
        assert floor <= r <= ceiling
        mask = Sparsity(r).mask(w)
        assert int(mask.sum()) == n - round(r * n)  # the layer's projection keeps that count
        kept += int(mask.sum())
    assert kept == total - target  # exact, well within one weight per layer


@settings(max_examples=60, deadline=None)
@given(weights=_weights(), ratio=st.floats(0, 0.95))
def test_global_threshold_is_one_magnitude_when_nothing_is_clipped(weights, ratio):
    try:
        ratios = allocate(weights, Sparsity(ratio), 0.0, 0.999)
    except ConstraintError:  # a ratio above what 0.999 leaves in small layers
        assume(False)
    removed, kept = [], []
    for name, w in weights.items():
        mask = Sparsity(ratios[name]).mask(w)
        removed += w[~mask].abs().tolist()
        kept += w[mask].abs().tolist()
    unclipped = all(
        round(ratios[n] * w.numel()) < math.floor(0.999 * w.numel()) for n, w in weights.items()
    )
    if removed and kept and unclipped:
        assert max(removed) <= min(kept)


@settings(max_examples=60, deadline=None)
@given(
    weights=_weights(),
    ratio=st.floats(0, 0.9),
    structure=st.sampled_from(["filter", "channel", "column"]),
)
def test_global_group_budget_is_met_within_one_group(weights, ratio, structure):
    sparsity = Sparsity(ratio, structure)
    total = sum(w.numel() for w in weights.values())
    sizes = [sparsity.group_sizes(w) for w in weights.values()]
    biggest = max(int(s.max()) for s in sizes)
    try:
        ratios = allocate(weights, sparsity, 0.0, 0.99)
    except ConstraintError:  # only when even the ceiling of every layer falls short
        most = sum(math.floor(0.99 * len(s)) * int(s[0]) for s in sizes)
        assert round(ratio * total) >= most + biggest
        return
    gone = 0
    for name, w in weights.items():
        assert 0 <= ratios[name] <= 0.99
        gone += int((~sparsity.with_ratio(ratios[name]).mask(w)).sum())
    assert abs(gone - round(ratio * total)) <= biggest


def test_global_plan_on_a_model(net):
    plan = Plan.global_(Sparsity(0.9), net, ceiling=0.98, exclude="fc2")
    resolved = plan.resolve(net)
    assert list(resolved) == ["conv1", "conv2", "features.0", "fc1"]
    sizes = {n: net.get_submodule(n).weight.numel() for n in resolved}
    gone = sum(round(c.ratio * sizes[n]) for n, c in resolved.items())
    assert gone == round(0.9 * sum(sizes.values()))
    assert max(c.ratio for c in resolved.values()) <= 0.98
    assert Plan.from_yaml(plan.to_yaml()) == plan


def test_global_plan_keeps_structure_options_and_quantization(net):
    plan = Plan.global_(Sparsity(0.5, "filter") & Quantization(bits=4), net, include="fc*")
    resolved = plan.resolve(net)
    assert list(resolved) == ["fc1", "fc2"]
    for c in resolved.values():
        assert c.structure == "filter" and c.value == Quantization(bits=4)


# ---- errors a user can cause -------------------------------------------------------------


def test_pattern_matching_no_layer_lists_the_layers(net):
    with pytest.raises(
        PlanError,
        match=r"layers pattern 'conv9' matches no Conv1d/Conv2d/Linear layer; did you mean "
        r"'conv\d'\?; layers: conv1, conv2, features.0, fc1, fc2; fix",
    ):
        Plan({"conv9": A}).resolve(net)


def test_pattern_matching_only_a_batchnorm_says_so(net):
    with pytest.raises(
        PlanError, match=r"only modules without a prunable weight: bn1 \(BatchNorm2d\)"
    ):
        Plan({"bn*": A}).resolve(net)


def test_exclude_matching_nothing(net):
    with pytest.raises(PlanError, match=r"exclude pattern 'fc3' matches no .*did you mean 'fc\d'"):
        Plan({"conv*": A}, exclude=["fc3"]).resolve(net)


def test_pattern_shadowed_by_an_earlier_one(net):
    with pytest.raises(PlanError, match=r"'fc1' is shadowed: .* earlier pattern '\*'.* first"):
        Plan({"*": A, "fc1": B}).resolve(net)


def test_pattern_matching_only_excluded_layers(net):
    with pytest.raises(PlanError, match=r"'fc2' only matches excluded layers \(fc2\)"):
        Plan({"fc2": A}, exclude="fc*").resolve(net)


def test_model_without_prunable_layers():
    with pytest.raises(PlanError, match=r"Sequential has no Conv1d/Conv2d/Linear layer"):
        Plan(default=A).resolve(nn.Sequential(nn.ReLU()))


def test_value_that_is_not_a_constraint():
    with pytest.raises(PlanError, match=r"plan layers\['fc1'\] is 0.9, not a constraint"):
        Plan({"fc1": 0.9})  # type: ignore[dict-item]
    with pytest.raises(PlanError, match=r"plan layers\['fc1'\] is 0.9; write a constraint"):
        Plan.from_yaml("layers: {fc1: 0.9}")


def test_ratio_outside_unit_interval():
    with pytest.raises(ConstraintError, match=r"layers\['conv\*'\]: .*ratio=1.5 is not allowed"):
        Plan.from_yaml('layers: {"conv*": {type: sparsity, ratio: 1.5}}')


def test_block_larger_than_the_weight(net):
    plan = Plan({"fc2": Sparsity(0.5, "block", block=(128, 16))})
    with pytest.raises(ConstraintError, match=r"'fc2.weight' \(10×120\): block 128×16 is larger"):
        plan.resolve(net)


def test_nm_with_m_not_dividing_the_inputs(net):
    plan = Plan({"fc2": Sparsity(0.5, "nm", n=2, m=7)})
    with pytest.raises(ConstraintError, match=r"'fc2.weight'.*120 inputs is not a multiple of m=7"):
        plan.resolve(net)


def test_pattern_structure_on_a_kernel_that_is_not_k_by_k(net):
    with pytest.raises(ConstraintError, match=r"'features.0.weight'.* 3 kernels but .* 3×3"):
        Plan({"features.0": Sparsity(0.5, "pattern")}).resolve(net)
    with pytest.raises(ConstraintError, match=r"'fc1.weight'.*no kernels \(Linear\)"):
        Plan({"fc1": Sparsity(0.5, "pattern")}).resolve(net)


def test_quantization_bits_below_one():
    with pytest.raises(ConstraintError, match=r"layers\['fc1'\]\[1\]: .*bits=0 is not allowed"):
        Plan.from_yaml(
            "layers: {fc1: [{type: sparsity, ratio: 0.5}, {type: quantization, bits: 0}]}"
        )


def test_unknown_structure_in_yaml():
    with pytest.raises(UnknownNameError, match=r"structure 'filtr' is unknown \(did you mean"):
        Plan.from_yaml("layers: {fc1: {type: sparsity, ratio: 0.5, structure: filtr}}")


def test_invalid_regex():
    with pytest.raises(PlanError, match=r"layers pattern 're:conv\(' is not a valid regular"):
        Plan({"re:conv(": A})


def test_unknown_plan_key():
    with pytest.raises(PlanError, match=r"plan key 'layer' is unknown \(did you mean 'layers'\?\)"):
        Plan.from_yaml("layer: {fc1: {type: sparsity, ratio: 0.5}}")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(PlanError, match=r"plan YAML is not valid YAML at line 1, column \d+"):
        Plan.from_yaml("layers: [a")
    bad = tmp_path / "bad.yaml"
    bad.write_text("layers:\n  fc1: {type: sparsity\n")
    with pytest.raises(PlanError, match=r"plan file '.*bad.yaml' is not valid YAML at line"):
        Plan.from_yaml(bad)
    with pytest.raises(PlanError, match=r"plan file 'nope.yaml' does not exist"):
        Plan.from_yaml("nope.yaml")


def test_global_budget_that_cannot_be_met(net):
    with pytest.raises(
        ConstraintError, match=r"ratio=0.99 cannot be met: with ceiling=0.5 at most"
    ):
        Plan.global_(Sparsity(0.99), net, ceiling=0.5)
    with pytest.raises(ConstraintError, match=r"ratio=0.1 cannot be met: with floor=0.5 at least"):
        Plan.global_(Sparsity(0.1), net, floor=0.5)
    with pytest.raises(ConstraintError, match=r"floor=0.6 > ceiling=0.5"):
        Plan.global_(Sparsity(0.5), net, floor=0.6, ceiling=0.5)


def test_global_budget_needs_a_groupwise_sparsity(net):
    with pytest.raises(
        ConstraintError, match=r"cannot allocate structure 'nm'.*allowed: irregular"
    ):
        Plan.global_(Sparsity(0.5, "nm"), net)
    with pytest.raises(ConstraintError, match=r"needs one Sparsity.*got Quantization"):
        Plan.global_(Quantization(bits=3), net)


def test_global_include_and_exclude_errors(net):
    with pytest.raises(PlanError, match=r"include pattern 'cnv\*' matches no"):
        Plan.global_(Sparsity(0.5), net, include="cnv*")
    with pytest.raises(PlanError, match=r"leave no layer to share the budget"):
        Plan.global_(Sparsity(0.5), net, include="fc*", exclude="fc*")
