"""Tests of src/neulvm.py, the public API: the likelihood refuses bad input with a ValueError or returns
finite numbers (property tests, and the case they found), both backends agree."""
import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from src import neulvm
from src.network import Network, winner_take_all
from src.window import Z_MAX, Z_MIN, Window
from tests.conftest import random_case


def test_public_losses_reject_bad_input():
    net, window, theta, Z = random_case(seed=9, T=20, K=30)
    for bad_theta in (theta[:5], np.where(np.arange(12) == 3, np.nan, theta)):
        with pytest.raises(ValueError, match="theta"):
            neulvm.losses(bad_theta, window, Z, backend="numpy")
    for bad_Z in (Z[..., :5], np.where(Z > 0.02, np.nan, Z), Z + 2.0):
        with pytest.raises(ValueError, match="Z must"):
            neulvm.losses(theta, window, bad_Z, backend="numpy")
    for backend in ("numpy", "tensorflow"):
        with pytest.raises(ValueError, match="scheme must be one of exact, euler, got 'rk4'"):
            neulvm.losses(theta, window, Z, backend=backend, scheme="rk4")
    with pytest.raises(ValueError, match="scheme must be one of exact, euler, got 'Exact'"):
        neulvm.simulate(net, 1.0, seed=0, scheme="Exact")
    with pytest.raises(ValueError, match="backend must be 'tensorflow' or 'numpy', got 'jax'"):
        neulvm.losses(theta, window, Z, backend="jax")


@st.composite
def likelihood_inputs(draw):
    """A window of random shape and content (mostly valid, sometimes not), theta in the M-step's box and
    Z in the latent's box (sometimes of the wrong shape)."""
    M, B, Nobs = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
    K, T = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    dt = draw(st.floats(1e-4, 8e-3))        # forward Euler needs dt * amem < 1: amem <= 2 x 50 in the box
    spike_values = draw(st.sampled_from([(0.0, 1.0), (0.0, 1.0), (0.0, 1.0), (0.0, 1.0, 2.0), (0.0, np.nan)]))
    y = draw(hnp.arrays(np.float64, (B, M, Nobs, K + T), elements=st.sampled_from(spike_values)))
    # |I_ext| up to 1e4 potential units / s (40x the largest synaptic drive of the example network):
    # stronger inhibition underflows log P (test_strong_inhibition_keeps_log_p_finite)
    big = draw(st.sampled_from([1e2, 1e3, 1e4]))
    I_ext = draw(hnp.arrays(np.float64, (B, M, T), elements=st.floats(-big, big) | st.sampled_from([0.0, 5.0])))
    if draw(st.integers(0, 9)) == 0:
        I_ext[..., 0] = np.nan
    net = winner_take_all() if M == 3 else Network(
        N=draw(st.lists(st.integers(1, 500), min_size=M, max_size=M)), amem=[50.0] * M, rp=[14.4] * M,
        ft=[3.7] * M, J=[10.0] * M, conmat=np.where(np.eye(M) > 0, 1.0, -1.0), asyn=[300.0] * M,
        init_rates=[5.0] * M)
    theta = net.theta * np.asarray(draw(st.lists(st.floats(0.4, 2.0), min_size=4 * M, max_size=4 * M)))
    Z = draw(hnp.arrays(np.float64, (B, M, T), elements=st.floats(Z_MIN, Z_MAX)))
    if draw(st.integers(0, 9)) == 0:
        Z = Z[..., :-1]
    return dict(net=net, dt=dt, K=K, y=y, I_ext=I_ext), theta, Z


@settings(max_examples=80, deadline=None, derandomize=True)
@given(inputs=likelihood_inputs())
def test_likelihood_raises_value_error_or_returns_finite_numbers(inputs):
    window_fields, theta, Z = inputs
    y, I_ext = window_fields["y"], window_fields["I_ext"]
    valid = (set(np.unique(y)) <= {0.0, 1.0} and np.all(np.isfinite(I_ext))
             and Z.shape == (y.shape[0], y.shape[1], y.shape[3] - window_fields["K"]))
    try:
        window = Window(**window_fields)
        loss_y, loss_Z = neulvm.losses(theta, window, Z, backend="numpy")
    except ValueError as error:
        assert "\n" not in str(error) and str(error)
        assert not valid, f"valid input refused: {error}"
        event("refused")
        return
    event("finite losses")
    assert valid, "invalid input (spikes not 0/1, NaN input or Z of the wrong shape) accepted"
    assert np.isfinite(loss_y) and np.isfinite(loss_Z), (loss_y, loss_Z)


def test_strong_inhibition_keeps_log_p_finite():
    """Found by the property test above: an observed spike after 5 bins of an input of -1e5 units / s
    (V - ft < -745, where exp underflows). Both backends, and the TensorFlow gradient."""
    net = winner_take_all()
    y = np.zeros((1, 3, 1, 6))
    y[0, 0, 0, -1] = 1
    window = Window(net=net, dt=0.004, K=1, y=y, I_ext=np.full((1, 3, 5), -1e5))
    Z = np.full((1, 3, 5), Z_MAX)
    loss_y, loss_Z = neulvm.losses(net.theta, window, Z, backend="numpy")
    assert np.isfinite(loss_y) and np.isfinite(loss_Z), (loss_y, loss_Z)
    assert loss_y * 15 > 745, loss_y     # log P of the spike is below -745, where the naive formula gave -inf
    np.testing.assert_allclose(neulvm.losses(net.theta, window, Z), (loss_y, loss_Z), rtol=1e-12)
    from src.LIFmesoCell import MesoModel
    for wrt in ("theta", "Z"):
        *_, grad = MesoModel(window, net.theta, Z, "exact").value_and_grad(wrt)
        assert np.all(np.isfinite(grad.numpy())), wrt
