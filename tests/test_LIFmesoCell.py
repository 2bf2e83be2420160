"""The TensorFlow likelihood against the numpy reference (src/fast_np.py): values, gradients."""
import os

import numpy as np
import pytest
import tensorflow as tf

from src import fast_np, neulvm
from src.LIFmesoCell import MesoModel, linear_filter, time_chunks
from src.network import winner_take_all
from src.window import Z_MAX, Z_MIN, Window
from tests.conftest import random_case

DATASET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dataset", "3pop_noinput_small.npz")
RTOL_VALUE = 1e-9   # float64: the two computations differ only in the order of sums
RTOL_GRAD = 1e-5    # central differences with step 1e-6 (theta) / 1e-8 (Z): truncation ~1e-8


def test_linear_filter_matches_loop():
    rng = np.random.default_rng(0)
    a, x = rng.uniform(0.5, 0.99, (3, 1)), rng.normal(size=(3, 300))
    expected = np.zeros_like(x)
    for t in range(300):
        expected[:, t] = (a[:, 0] * expected[:, t - 1] if t else 0) + x[:, t]
    np.testing.assert_allclose(linear_filter(tf.constant(a), tf.constant(x)).numpy(), expected, rtol=1e-12)


# every case of issue 3 for the default scheme; euler at the shortest and the longest window (both
# schemes share every line but (q, g))
CASES = [(1, 1, False, False), (2, 3, True, True), (1, 30, True, False), (2, 1, False, True)]


@pytest.mark.parametrize("B, Nobs, with_input, silent", CASES)
@pytest.mark.parametrize("scheme, T", [("exact", T) for T in (1, 7, 60, 300)] + [("euler", 1), ("euler", 300)])
def test_losses_equal_reference(T, B, Nobs, with_input, silent, scheme):
    """Eager TensorFlow = numpy in every case; the XLA-compiled function (what fits run; each compile
    takes 2-3 s) for the richest case at every window and for every case at the longest exact one."""
    net, window, theta, Z = random_case(seed=T + 10 * B + Nobs, B=B, Nobs=Nobs, T=T,
                                        with_input=with_input, silent_neuron=silent)
    expected = fast_np.losses(net.with_theta(theta), window, Z, scheme)
    model = MesoModel(window, theta, Z, scheme)
    eager = [float(v) for v in model._losses(model.theta, model.Z)]
    np.testing.assert_allclose(eager, expected, rtol=RTOL_VALUE, err_msg="eager vs numpy")
    if (B, Nobs, with_input, silent) == CASES[1] or (scheme, T) == ("exact", 300):
        np.testing.assert_allclose(model.losses(), expected, rtol=RTOL_VALUE, err_msg="tf.function (XLA) vs numpy")


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_full_age_grid_equals_reference(scheme):
    """The default age grid (K = 250, 1 s) with a window longer than the grid."""
    net, window, theta, Z = random_case(seed=5, B=1, Nobs=3, T=400, K=250, silent_neuron=True)
    expected = fast_np.losses(net.with_theta(theta), window, Z, scheme)
    np.testing.assert_allclose(MesoModel(window, theta, Z, scheme).losses(), expected, rtol=RTOL_VALUE)


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_float32_close_to_float64(scheme):
    net, window, theta, Z = random_case(seed=6, T=200, K=100)
    expected = fast_np.losses(net.with_theta(theta), window, Z, scheme)
    np.testing.assert_allclose(MesoModel(window, theta, Z, scheme, dtype=tf.float32).losses(), expected, rtol=1e-4)


@pytest.mark.parametrize("scheme, seed", [("exact", 0), ("exact", 1), ("euler", 0)])
def test_theta_gradient_equals_finite_differences(seed, scheme):
    net, window, theta, Z = random_case(seed=seed, B=2, Nobs=2, T=40, K=50, with_input=True, silent_neuron=True)
    _, _, grad = MesoModel(window, theta, Z, scheme).value_and_grad("theta")
    fd = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = 1e-6 * abs(theta[i])
        fd[i] = (fast_np.objective(theta + step, net, window, Z, scheme)
                 - fast_np.objective(theta - step, net, window, Z, scheme)) / (2 * step[i])
    np.testing.assert_allclose(grad.numpy(), fd, rtol=RTOL_GRAD, atol=1e-7, err_msg="autodiff vs central FD")


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_Z_gradient_equals_finite_differences(scheme):
    # theta near the truth keeps the loss O(1-100): central differences of a loss of 1e8 would be
    # dominated by rounding (eps * loss / step)
    net, window, _, Z = random_case(seed=3, B=2, Nobs=2, T=40, K=50, with_input=True)
    theta = net.theta * np.random.default_rng(3).uniform(0.8, 1.25, net.theta.size)
    _, _, grad = MesoModel(window, theta, Z, scheme).value_and_grad("Z")
    rng = np.random.default_rng(0)
    entries = [tuple(rng.integers(s) for s in Z.shape) for _ in range(8)] + [(0, 0, 0), (1, 2, 39)]
    net_theta = net.with_theta(theta)
    for idx in entries:
        step = 1e-8
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += step
        Zm[idx] -= step
        fd = (sum(fast_np.losses(net_theta, window, Zp, scheme)) - sum(fast_np.losses(net_theta, window, Zm, scheme))) / (2 * step)
        np.testing.assert_allclose(grad.numpy()[idx], fd, rtol=RTOL_GRAD, atol=1e-6, err_msg=f"dLoss/dZ{idx}")


def test_loss_is_smooth_along_theta(scheme="exact"):
    """No jump where lam*dt crosses 0.01 (the original switched formulas there): along a line through
    the box, the autodiff slope equals the slope of central differences of the reference at every point
    (the escape function, where a jump would be, is the same for both schemes)."""
    net, window, _, Z = random_case(seed=7, T=40, K=50)
    lo, hi = 0.4 * net.theta, 2.0 * net.theta
    model = MesoModel(window, net.theta, Z, scheme)
    direction = (hi - lo) / np.linalg.norm(hi - lo)
    for s in np.linspace(0.02, 0.98, 25):
        theta = lo + s * (hi - lo)
        _, _, grad = model.value_and_grad("theta", theta=theta)
        h = 1e-5
        fd = (fast_np.objective(theta + h * direction, net, window, Z, scheme)
              - fast_np.objective(theta - h * direction, net, window, Z, scheme)) / (2 * h)
        np.testing.assert_allclose(grad.numpy() @ direction, fd, rtol=1e-5, atol=1e-6, err_msg=f"at s={s:.2f}")


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_finite_at_bounds(scheme):
    """The box's corners with Z at its edges and a silent neuron: finite values equal to the numpy
    reference's, and finite gradients."""
    net, window, _, Z = random_case(seed=8, T=40, K=50, silent_neuron=True)
    lo, hi = 0.4 * net.theta, 2.0 * net.theta
    Z_edges = Z.copy()
    Z_edges[..., ::3] = 1e-5
    Z_edges[..., 1::5] = 1.0
    model = MesoModel(window, lo, Z_edges, scheme)
    for corner, theta in {"low": lo, "high": hi, "mixed": np.where(np.arange(12) % 2, lo, hi)}.items():
        expected = fast_np.losses(net.with_theta(theta), window, Z_edges, scheme)
        for wrt in ("theta", "Z"):
            loss_y, loss_Z, grad = model.value_and_grad(wrt, theta=theta)
            assert np.isfinite(float(loss_y)) and np.isfinite(float(loss_Z)), (corner, wrt, loss_y, loss_Z)
            # at the corners loss_y reaches 1e9 and sums lose digits: measured up to 6e-9 relative (loss_Z,
            # high corner, exact), so 1e-7 here; a wrong term would be off by far more
            np.testing.assert_allclose([float(loss_y), float(loss_Z)], expected, rtol=1e-7,
                                       err_msg=f"{corner} corner, value_and_grad({wrt!r}) vs numpy")
            assert np.all(np.isfinite(grad.numpy())), (corner, wrt)

def test_time_chunks_tile_the_window():
    for T, K, n in [(200, 50, 2), (777, 60, 2), (2500, 250, 2), (25000, 250, 4), (100, 50, 2)]:
        chunks, L = time_chunks(T, K, n)
        assert chunks[0][:2] == (0, 0) and chunks[-1][2] == T
        for (c0, t0, t1), (_, t0_next, _) in zip(chunks, chunks[1:] + [(None, T, None)]):
            assert t1 == t0_next and c0 >= 0 and c0 + L <= T and (c0 == 0 or t0 - c0 >= K), (T, K, chunks, L)


@pytest.mark.parametrize("wrt", ["theta", "Z"])
def test_chunked_gradient_equals_finite_differences(wrt, scheme="exact"):
    """T = 200 >= 3K: two chunks of 125 bins that overlap by K = 50 (the chunking does not depend on
    the scheme, whose adjoint the unchunked tests above check for both)."""
    net, window, _, Z = random_case(seed=4, B=2, Nobs=2, T=200, K=50, with_input=True, silent_neuron=True)
    theta = net.theta * np.random.default_rng(4).uniform(0.8, 1.25, net.theta.size)
    model = MesoModel(window, theta, Z, scheme)
    assert len(model._chunks) == 2
    loss_y, loss_Z, grad = model.value_and_grad(wrt)
    np.testing.assert_allclose([loss_y, loss_Z], fast_np.losses(net.with_theta(theta), window, Z, scheme), rtol=1e-9)
    rng = np.random.default_rng(1)
    if wrt == "theta":
        entries, x0, step = [(i,) for i in range(theta.size)], theta, 1e-6 * np.abs(theta)
        loss = lambda x: fast_np.objective(x, net, window, Z, scheme)  # noqa: E731
    else:
        entries = [tuple(rng.integers(s) for s in Z.shape) for _ in range(8)] + [(0, 1, 124), (1, 2, 125), (0, 0, 80)]
        x0, step = Z, np.full(Z.shape, 1e-8)
        loss = lambda x: sum(fast_np.losses(net.with_theta(theta), window, x, scheme))  # noqa: E731
    for idx in entries:
        xp, xm = x0.copy(), x0.copy()
        xp[idx] += step[idx]
        xm[idx] -= step[idx]
        fd = (loss(xp) - loss(xm)) / (2 * step[idx])
        np.testing.assert_allclose(grad.numpy()[idx], fd, rtol=1e-5, atol=1e-6, err_msg=f"d/d{wrt}{idx}")


@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_truth_beats_scaled_parameters_on_the_dataset(scheme):
    """Default window of the shipped dataset, true activity: scaling one parameter group (amem, J, rp
    or ft) by 0.7 or 1.3 raises the loss."""
    window = neulvm.load_window(DATASET)
    truth, Z = window.net.theta, np.clip(window.Z_true, 1e-5, 1.0)
    model = MesoModel(window, truth, Z, scheme)
    best = sum(model.losses())
    for group, factor in [(g, f) for g in range(4) for f in (0.7, 1.3)]:
        theta = truth.copy()
        theta[group * 3:(group + 1) * 3] *= factor
        assert sum(model.losses(theta=theta)) > best, (group, factor)


def test_losses_and_gradients_at_2ms(scheme="exact"):
    """dt = 2 ms: two refractory bins (n_ref = 2), the TF values equal the reference and the gradients
    equal central differences (theta: every entry; Z: a sample), with the default scheme."""
    net, window, theta, Z = random_case(seed=12, B=1, Nobs=2, T=90, K=80, with_input=True, silent_neuron=True,
                                        dt=0.002)
    theta = net.theta * np.random.default_rng(12).uniform(0.8, 1.25, net.theta.size)
    assert window.n_ref == 2
    model = MesoModel(window, theta, Z, scheme)
    np.testing.assert_allclose(model.losses(), fast_np.losses(net.with_theta(theta), window, Z, scheme), rtol=RTOL_VALUE)
    _, _, grad = model.value_and_grad("theta")
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = 1e-6 * abs(theta[i])
        fd = (fast_np.objective(theta + step, net, window, Z, scheme)
              - fast_np.objective(theta - step, net, window, Z, scheme)) / (2 * step[i])
        np.testing.assert_allclose(grad.numpy()[i], fd, rtol=RTOL_GRAD, atol=1e-7, err_msg=f"d/dtheta[{i}]")
    _, _, grad = model.value_and_grad("Z")
    rng = np.random.default_rng(2)
    net_theta = net.with_theta(theta)
    for idx in [tuple(rng.integers(s) for s in Z.shape) for _ in range(6)] + [(0, 0, 0), (0, 2, 89)]:
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += 1e-8
        Zm[idx] -= 1e-8
        fd = (sum(fast_np.losses(net_theta, window, Zp, scheme)) - sum(fast_np.losses(net_theta, window, Zm, scheme))) / 2e-8
        np.testing.assert_allclose(grad.numpy()[idx], fd, rtol=RTOL_GRAD, atol=1e-6, err_msg=f"d/dZ{idx}")


# ------------------------------------------------------------- the likelihood at its domain's edges
@pytest.fixture(scope="module")
def edge_window():
    """Batch 0: 0.2 s of the shipped data with observed neuron 0 of each population silent; batch 1:
    the same window without any spike."""
    w = neulvm.load_window(DATASET, trial_length=0.2, t_perbatch=0.2, end_timepoint=0.6, a_cutoff=0.2)
    y = np.concatenate([w.y, np.zeros_like(w.y)])          # (2, M, Nobs, K+T)
    y[0, :, 0] = 0
    assert y[0].sum() > 0 and y[1].sum() == 0
    return Window(net=w.net, dt=w.dt, K=w.K, y=y, I_ext=np.zeros((2, w.M, w.T)))


@pytest.fixture(scope="module")
def edge_model(edge_window):
    return MesoModel(edge_window, edge_window.net.theta, np.full((2, 3, edge_window.T), 0.01), "exact")


TRUTH = winner_take_all().theta
EDGE_THETA = {"lower bounds": 0.4 * TRUTH, "upper bounds": 2.0 * TRUTH,
              "alternating": np.where(np.arange(12) % 2, 0.4, 2.0) * TRUTH,   # worst case measured: loss ~1e32
              "alternating'": np.where(np.arange(12) % 2, 2.0, 0.4) * TRUTH}
EDGE_Z = {"Z_MIN": Z_MIN, "Z_MAX": Z_MAX, "both": None}


@pytest.mark.parametrize("theta_name", list(EDGE_THETA))
@pytest.mark.parametrize("Z_name", list(EDGE_Z))
def test_finite_loss_and_gradient_at_the_edges(edge_window, edge_model, theta_name, Z_name):
    theta, shape = EDGE_THETA[theta_name], (2, 3, edge_window.T)
    Z = np.full(shape, EDGE_Z[Z_name]) if EDGE_Z[Z_name] else np.where(np.arange(shape[-1]) % 2, Z_MIN, Z_MAX)
    Z = np.broadcast_to(Z, shape).copy()
    reference = neulvm.losses(theta, edge_window, Z, backend="numpy")
    assert np.all(np.isfinite(reference)), reference
    for wrt in ("theta", "Z"):
        loss_y, loss_Z, grad = (np.asarray(v) for v in edge_model.value_and_grad(wrt, theta=theta, Z=Z))
        assert np.isfinite(loss_y) and np.isfinite(loss_Z) and np.all(np.isfinite(grad)), (wrt, loss_y, loss_Z)
        np.testing.assert_allclose([loss_y, loss_Z], reference, rtol=1e-9, err_msg=f"{theta_name}, {Z_name}")
