"""DEQ-Flow: agreement with the official code, the fixed-point solvers, checkpoint conversion, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import CheckpointError, get_spec, load_model
from models.checkpoint import load_strict
from models.deq_solvers import SOLVERS, anderson, broyden, get_solver, naive_solver
from models.deqflow import DIMS_T, DEQFlow, convert_official, fold_weight_norm
from tests.deqflow_reference import CASES, FIXTURE, SUBSAMPLE, seeded_state, sintel_pair


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The solvers run many tiny ops, which a second thread only slows down on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seeded_model(name: str, **overrides) -> DEQFlow:
    model = load_model(name, random_init=True, **overrides)
    load_strict(model, convert_official(seeded_state(model)))
    return model


# --- agreement with the official code ----------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_official_code(case: str, shared_data) -> None:
    """Same seeded weights (official key format) and Sintel crop as the official code run (fixture)."""
    name, overrides, *_ = CASES[case]
    expected = np.load(FIXTURE)[case]
    image0, image1 = sintel_pair()
    with torch.no_grad():
        flow = seeded_model(name, **overrides)(image0, image1)[0][SUBSAMPLE].numpy()
    # Bitwise equal on the machine that made the fixture; the official code's own float32 noise on
    # this input (1 vs 2 threads, input jitter of 1e-3) is ≤ 4e-6 relative.
    assert np.linalg.norm(flow - expected) / np.linalg.norm(expected) < 2e-5
    assert np.abs(flow - expected).max() < 1e-3
    assert np.sqrt((expected**2).mean()) > 10  # the fixed point is a real, large flow


def test_batch_gives_each_pair_its_own_flow(shared_data) -> None:
    """A batch returns what each pair returns alone: nothing mixes samples in the flat state or the solver."""
    model = seeded_model("deqflow_t", solver="anderson")
    image0, image1 = sintel_pair()
    with torch.no_grad():
        single = model(image0, image1)
        swapped = model(image1, image0)
        batch = model(torch.cat([image0, image1]), torch.cat([image1, image0]))
    torch.testing.assert_close(batch, torch.cat([single, swapped]), rtol=0, atol=1e-4)


def test_on_demand_correlation_gives_the_same_flow(shared_data) -> None:
    image0, image1 = sintel_pair()
    with torch.no_grad():
        all_pairs = seeded_model("deqflow_t")(image0, image1)
        on_demand = seeded_model("deqflow_t", corr="on_demand")(image0, image1)
    torch.testing.assert_close(on_demand, all_pairs, rtol=0, atol=1e-3)


# --- solvers -----------------------------------------------------------------------------------------


def linear_contraction(rates: tuple[float, ...] = (0.95, 0.6), dim: int = 40, seed: int = 0):
    """f(z) = A_b z + c_b, A_b symmetric with spectral radius rate_b, and its exact fixed point (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(rates), dim, dim, generator=gen, dtype=torch.float64))
    eig = torch.rand(len(rates), dim, generator=gen, dtype=torch.float64) * 2 - 1
    eig = eig / eig.abs().amax(1, keepdim=True) * torch.tensor(rates, dtype=torch.float64)[:, None]
    a = q @ torch.diag_embed(eig) @ q.transpose(1, 2)
    c = 100 * torch.randn(len(rates), dim, generator=gen, dtype=torch.float64)
    fixed = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - a, c)
    return (lambda z: torch.einsum("bij,bj->bi", a, z) + c), fixed


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_solver_converges_on_a_contraction(solver: str) -> None:
    rates, eps = (0.95, 0.6), 1e-3
    f, fixed = linear_contraction(rates)
    result = get_solver(solver)(f, torch.zeros_like(fixed), threshold=400, eps=eps, stop_mode="abs")
    assert (result.abs_residual < eps).all()
    assert (result.nstep < 400).all()  # stopped on eps, not on the threshold
    # For a contraction of rate ρ, ‖x − z*‖ ≤ ‖f(x) − x‖ / (1 − ρ); f(x) is closer still.
    error = (result.z - fixed).norm(dim=1)
    assert (error <= eps / (1 - torch.tensor(rates, dtype=torch.float64))).all()


def test_accelerated_solvers_need_fewer_steps_than_iteration() -> None:
    f, fixed = linear_contraction()
    steps = {name: get_solver(name)(f, torch.zeros_like(fixed), threshold=400).nstep[0].item() for name in SOLVERS}
    assert steps["anderson"] < steps["naive"] and steps["broyden"] < steps["naive"] / 2, steps


def test_samples_stop_independently() -> None:
    """Sample 1 contracts much faster; its result must not depend on sample 0 still iterating."""
    f, fixed = linear_contraction((0.95, 0.3))
    for solve in (naive_solver, anderson, broyden):
        both = solve(f, torch.zeros_like(fixed), threshold=400, eps=1e-3)
        alone = solve(lambda z: f(torch.cat([z, z]))[1:], torch.zeros_like(fixed[1:]), threshold=400, eps=1e-3)
        assert both.nstep[1] < both.nstep[0]
        assert both.nstep[1] == alone.nstep[0]
        torch.testing.assert_close(both.z[1:], alone.z, rtol=0, atol=1e-12)


def test_rel_stop_mode_uses_relative_residual() -> None:
    f, fixed = linear_contraction()
    result = broyden(f, torch.zeros_like(fixed), threshold=400, eps=1e-6, stop_mode="rel")  # returns z itself
    assert (result.rel_residual < 1e-6).all() and (result.abs_residual > 1e-6).all()
    fz = f(result.z)
    torch.testing.assert_close(result.abs_residual, (fz - result.z).norm(dim=1))
    expected = (fz - result.z).norm(dim=1) / (fz.norm(dim=1) + 1e-8)
    torch.testing.assert_close(result.rel_residual, expected, rtol=1e-12, atol=0)


def test_threshold_caps_the_evaluations() -> None:
    calls = []
    f, fixed = linear_contraction((0.99, 0.99))
    counted = lambda z: calls.append(1) or f(z)  # noqa: E731
    for solve, evaluations in ((naive_solver, 7), (anderson, 7), (broyden, 8)):
        calls.clear()
        result = solve(counted, torch.zeros_like(fixed), threshold=7, eps=1e-12)
        assert len(calls) == evaluations
        assert (result.abs_residual > 1e-12).all()


def test_naive_solver_keeps_the_last_iterate_unless_the_residual_jumps_by_one() -> None:
    """Official quirk (``lowest + return_final``): the last image is returned while the residual
    grows by less than 1; Anderson/Broyden return the lowest-residual iterate instead."""
    z0 = torch.zeros(1, 1)
    slow = naive_solver(lambda z: 2 * z + 0.1, z0, threshold=3)  # residuals 0.1, 0.2, 0.4
    torch.testing.assert_close(slow.z, torch.tensor([[0.7]]))
    fast = naive_solver(lambda z: 4 * z + 1.0, z0, threshold=3)  # residuals 1, 4, 16: jumps > 1
    torch.testing.assert_close(fast.z, torch.tensor([[1.0]]))


def test_anderson_return_image_selects_f_of_the_iterate() -> None:
    f, fixed = linear_contraction()
    mixed = anderson(f, torch.zeros_like(fixed), threshold=5, eps=0.0, return_image=False)
    image = anderson(f, torch.zeros_like(fixed), threshold=5, eps=0.0, return_image=True)
    torch.testing.assert_close(image.z, f(mixed.z))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"stop_mode": "max"}, "stop_mode: expected one of"), ({"threshold": 0}, "threshold: expected at least 1")],
)
def test_solver_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"threshold": 5, **kwargs}
    with pytest.raises(ValueError, match=message):
        naive_solver(lambda z: z, torch.zeros(1, 3), **args)


def test_unknown_solver_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"expected one of \['anderson', 'broyden', 'naive'\], got 'newton'"):
        get_solver("newton")


# --- model -------------------------------------------------------------------------------------------


def test_random_init_on_odd_sizes() -> None:
    torch.manual_seed(0)
    model = load_model("deqflow_t", random_init=True)
    image0, image1 = torch.rand(2, 3, 37, 53) * 255, torch.rand(2, 3, 37, 53) * 255
    flow = model(image0, image1)
    assert flow.shape == (2, 2, 37, 53) and flow.dtype == torch.float32
    assert torch.isfinite(flow).all()


def test_kitti_padding_and_overrides() -> None:
    model = load_model("deqflow_h", random_init=True, pad_mode="kitti", solver="broyden", eval_factor=2.0)
    assert model.pad_mode == "kitti" and model.solver == "broyden" and model.threshold == 80
    assert model._padding(torch.zeros(1, 3, 375, 1242)).pads == (3, 3, 0, 1)
    with pytest.raises(ValueError, match="pad_mode: expected one of"):
        load_model("deqflow_h", random_init=True, pad_mode="middle")
    with pytest.raises(ValueError, match="solver: expected one of"):
        load_model("deqflow_h", random_init=True, solver="newton")


@pytest.mark.parametrize(
    ("name", "millions"),
    # Parameter counts printed by the official code (code.v.1.0/ref/val.txt, code.v.2.0/log/val.txt);
    # they count weight norm's g as parameters: one per output channel of each update-block conv.
    [("deqflow_b", 5.243), ("deqflow_h_v1", 12.800), ("deqflow_h", 13.395)],
)
def test_parameter_count_matches_official(name: str, millions: float) -> None:
    model = load_model(name, random_init=True)
    convs = [m for n, m in model.update_block.named_modules() if isinstance(m, torch.nn.Conv2d) and "mask" not in n]
    official = sum(p.numel() for p in model.parameters()) + sum(c.out_channels for c in convs)
    assert round(official / 1e6, 3) == millions


# --- checkpoints -------------------------------------------------------------------------------------


def test_converter_consumes_every_official_key() -> None:
    model = load_model("deqflow_t", random_init=True)
    official = seeded_state(model)
    assert any(k.endswith(".weight_g") for k in official) and all(k.startswith("module.") for k in official)
    converted = convert_official(official)
    assert set(converted) == set(model.state_dict())
    load_strict(model, converted)
    g = official["module.update_block.gru.convq1.weight_g"]
    v = official["module.update_block.gru.convq1.weight_v"]
    torch.testing.assert_close(model.update_block.gru.convq1.weight, torch._weight_norm(v, g, 0))
    assert not torch.allclose(model.update_block.gru.convq1.weight, v)


def test_missing_and_extra_keys_are_listed() -> None:
    model = load_model("deqflow_t", random_init=True)
    official = seeded_state(model)
    del official["module.cnet.layer2.0.norm1.running_var"]
    official["module.attn.to_qk.weight"] = torch.zeros(1)
    listed = r"missing keys: cnet\.layer2\.0\.norm1\.running_var.*unexpected keys: attn\.to_qk\.weight"
    with pytest.raises(CheckpointError, match=listed):
        load_strict(model, convert_official(official))


def test_half_a_weight_norm_pair_is_rejected() -> None:
    official = seeded_state(load_model("deqflow_t", random_init=True))
    del official["module.update_block.flow_head.conv1.weight_v"]
    listed = r"update_block\.flow_head\.conv1\.weight.*missing \['update_block\.flow_head\.conv1\.weight_v'\]"
    with pytest.raises(CheckpointError, match=listed):
        convert_official(official)


def test_v1_and_v2_layouts_differ_where_the_mask_head_lives() -> None:
    v2_state = convert_official(seeded_state(load_model("deqflow_t", random_init=True)))
    listed = r"missing keys: update_block\.mask\.0\.bias.*unexpected keys: mask\.0\.bias"
    with pytest.raises(CheckpointError, match=listed):
        load_strict(DEQFlow(dims=DIMS_T, release=1), v2_state)


def test_load_model_with_an_official_file_applies_its_eval_settings(tmp_path) -> None:
    model = load_model("deqflow_t", random_init=True)
    path = tmp_path / "deq-flow-T-things-test.pth"
    torch.save(seeded_state(model), path)
    loaded = load_model("deqflow_t", checkpoint=str(path))
    assert loaded.threshold == 36 and loaded.solver == "naive"
    assert len(loaded.checkpoint_sha256) == 64
    expected = seeded_model("deqflow_t").update_block.flow_head.conv2.weight
    torch.testing.assert_close(loaded.update_block.flow_head.conv2.weight, expected)


def test_a_checkpoint_is_required_unless_random_init() -> None:
    with pytest.raises(ValueError, match="deqflow_h needs a checkpoint.*deq-flow-H-things-test-1x.pth"):
        load_model("deqflow_h")
    assert isinstance(load_model("deqflow_h", random_init=True), DEQFlow)


def test_fold_weight_norm_is_per_output_channel() -> None:
    v = torch.randn(4, 3, 3, 3)
    g = torch.rand(4, 1, 1, 1)
    w = fold_weight_norm(g, v)
    torch.testing.assert_close(w.flatten(1).norm(dim=1), g.flatten())


# --- registry ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "filename", "solver", "threshold", "published"),
    [
        ("deqflow_b", "deq-flow-B-things-test.pth", "anderson", 60, (1.43, 2.79, 5.43, 16.67)),
        ("deqflow_h", "deq-flow-H-things-test-1x.pth", "naive", 60, (1.27, 2.58, 3.76, 12.95)),
        ("deqflow_h", "deq-flow-H-things-test-3x.pth", "naive", 120, (1.27, 2.48, 3.77, 13.41)),
        ("deqflow_h_v1", "deq-flow-H-things-test-1.pth", "broyden", 54, (1.45, 2.58, 3.97, 13.41)),
        ("deqflow_t", "deq-flow-T-things-test.pth", "naive", 36, (1.768, 3.147, 7.60, 23.74)),
    ],
)
def test_registry_records_official_eval_settings(name, filename, solver, threshold, published) -> None:
    spec = get_spec(name)
    ckpt = spec.find_checkpoint(filename)
    assert ckpt is not None and ckpt.url.startswith("https://drive.google.com/") and ckpt.source
    config = {**spec.default_config, **ckpt.eval_config}
    model = spec.builder(**config)
    assert model.solver == solver and model.threshold == threshold and model.stop_mode == "abs" and model.eps == 1e-3
    assert dict(ckpt.benchmark_config["kitti"]) == {"pad_mode": "kitti"}
    assert dict(ckpt.benchmark_config["sintel"]) == {"pad_mode": "sintel"}
    keys = ("sintel_train_clean_epe", "sintel_train_final_epe", "kitti_train_epe", "kitti_train_fl_all")
    assert tuple(ckpt.published[k] for k in keys) == published
