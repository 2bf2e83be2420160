"""The TensorFlow likelihood against the numpy reference (src/fast_np.py): values, gradients."""
import numpy as np
import pytest
import tensorflow as tf

from src import fast_np
from src.LIFmesoCell import MesoModel, diagonal_cumsum, linear_filter
from tests.likelihood_cases import random_case

RTOL_VALUE = 1e-9   # float64: the two computations differ only in the order of sums
RTOL_GRAD = 1e-5    # central differences with step 1e-6 (theta) / 1e-8 (Z): truncation ~1e-8


def test_linear_filter_matches_loop():
    rng = np.random.default_rng(0)
    a, x = rng.uniform(0.5, 0.99, (3, 1)), rng.normal(size=(3, 300))
    expected = np.zeros_like(x)
    for t in range(300):
        expected[:, t] = (a[:, 0] * expected[:, t - 1] if t else 0) + x[:, t]
    np.testing.assert_allclose(linear_filter(tf.constant(a), tf.constant(x)).numpy(), expected, rtol=1e-12)


def test_diagonal_cumsum_matches_loop():
    x = np.random.default_rng(1).normal(size=(2, 7, 11))
    expected = np.zeros_like(x)
    for k in range(1, 7):
        for t in range(1, 11):
            expected[:, k, t] = expected[:, k - 1, t - 1] + x[:, k - 1, t - 1]
    np.testing.assert_allclose(diagonal_cumsum(tf.constant(x)).numpy(), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("T", [1, 7, 60, 300])
@pytest.mark.parametrize("B, Nobs, with_input, silent", [
    (1, 1, False, False), (2, 3, True, True), (1, 30, True, False), (2, 1, False, True)])
def test_losses_equal_reference(T, B, Nobs, with_input, silent):
    net, window, theta, Z = random_case(seed=T + 10 * B + Nobs, B=B, Nobs=Nobs, T=T,
                                        with_input=with_input, silent_neuron=silent)
    expected = fast_np.losses(net.with_theta(theta), window, Z)
    model = MesoModel(window, theta, Z)
    compiled = model.losses()
    eager = [float(v) for v in model._losses(model.theta, model.Z)]
    np.testing.assert_allclose(compiled, expected, rtol=RTOL_VALUE, err_msg="tf.function (XLA) vs numpy")
    np.testing.assert_allclose(eager, expected, rtol=RTOL_VALUE, err_msg="eager vs numpy")


def test_full_age_grid_equals_reference():
    """The default age grid (K = 250, 1 s) with a window longer than the grid."""
    net, window, theta, Z = random_case(seed=5, B=1, Nobs=3, T=400, K=250, silent_neuron=True)
    expected = fast_np.losses(net.with_theta(theta), window, Z)
    np.testing.assert_allclose(MesoModel(window, theta, Z).losses(), expected, rtol=RTOL_VALUE)


def test_float32_close_to_float64():
    net, window, theta, Z = random_case(seed=6, T=200, K=100)
    expected = fast_np.losses(net.with_theta(theta), window, Z)
    np.testing.assert_allclose(MesoModel(window, theta, Z, dtype=tf.float32).losses(), expected, rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_theta_gradient_equals_finite_differences(seed):
    net, window, theta, Z = random_case(seed=seed, B=2, Nobs=2, T=40, K=50, with_input=True, silent_neuron=True)
    _, _, grad = MesoModel(window, theta, Z).value_and_grad("theta")
    fd = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = 1e-6 * abs(theta[i])
        fd[i] = (fast_np.objective(theta + step, net, window, Z)
                 - fast_np.objective(theta - step, net, window, Z)) / (2 * step[i])
    np.testing.assert_allclose(grad.numpy(), fd, rtol=RTOL_GRAD, atol=1e-7, err_msg="autodiff vs central FD")


def test_Z_gradient_equals_finite_differences():
    # theta near the truth keeps the loss O(1-100): central differences of a loss of 1e8 would be
    # dominated by rounding (eps * loss / step)
    net, window, _, Z = random_case(seed=3, B=2, Nobs=2, T=40, K=50, with_input=True)
    theta = net.theta * np.random.default_rng(3).uniform(0.8, 1.25, net.theta.size)
    _, _, grad = MesoModel(window, theta, Z).value_and_grad("Z")
    rng = np.random.default_rng(0)
    entries = [tuple(rng.integers(s) for s in Z.shape) for _ in range(8)] + [(0, 0, 0), (1, 2, 39)]
    net_theta = net.with_theta(theta)
    for idx in entries:
        step = 1e-8
        Zp, Zm = Z.copy(), Z.copy()
        Zp[idx] += step
        Zm[idx] -= step
        fd = (sum(fast_np.losses(net_theta, window, Zp)) - sum(fast_np.losses(net_theta, window, Zm))) / (2 * step)
        np.testing.assert_allclose(grad.numpy()[idx], fd, rtol=RTOL_GRAD, atol=1e-6, err_msg=f"dLoss/dZ{idx}")


def test_loss_is_smooth_along_theta():
    """No jump where lam*dt crosses 0.01 (the original switched formulas there): along a line through
    the box, the autodiff slope equals the slope of central differences of the reference at every point."""
    net, window, _, Z = random_case(seed=7, T=40, K=50)
    lo, hi = 0.4 * net.theta, 2.0 * net.theta
    model = MesoModel(window, net.theta, Z)
    direction = (hi - lo) / np.linalg.norm(hi - lo)
    for s in np.linspace(0.02, 0.98, 25):
        theta = lo + s * (hi - lo)
        _, _, grad = model.value_and_grad("theta", theta=theta)
        h = 1e-5
        fd = (fast_np.objective(theta + h * direction, net, window, Z)
              - fast_np.objective(theta - h * direction, net, window, Z)) / (2 * h)
        np.testing.assert_allclose(grad.numpy() @ direction, fd, rtol=1e-5, atol=1e-6, err_msg=f"at s={s:.2f}")


@pytest.mark.parametrize("corner", ["low", "high", "mixed"])
def test_finite_at_bounds(corner):
    net, window, _, Z = random_case(seed=8, T=40, K=50, silent_neuron=True)
    lo, hi = 0.4 * net.theta, 2.0 * net.theta
    theta = {"low": lo, "high": hi, "mixed": np.where(np.arange(12) % 2, lo, hi)}[corner]
    Z_edges = Z.copy()
    Z_edges[..., ::3] = 1e-5
    Z_edges[..., 1::5] = 1.0
    model = MesoModel(window, theta, Z_edges)
    for wrt in ("theta", "Z"):
        loss_y, loss_Z, grad = model.value_and_grad(wrt)
        assert np.isfinite(float(loss_y)) and np.isfinite(float(loss_Z)), (corner, wrt, loss_y, loss_Z)
        assert np.all(np.isfinite(grad.numpy())), (corner, wrt)
