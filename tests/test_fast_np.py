"""The numpy reference against independent computations: quadrature, scipy.stats, limits."""
import numpy as np
import pytest
from scipy import integrate, stats

from src import fast_np
from src.network import winner_take_all


def test_stationary_survival_matches_quad():
    net = winner_take_all()
    A0 = np.array([[5.0, 20.0, 25.0]])
    dt, n = 0.004, 60
    V0, logS0 = fast_np.stationary_start(net, A0, dt, n)
    h0 = net.rp + (A0[0] @ net.W) / net.amem
    for a in range(3):
        def lam(r):
            return fast_np.HAZARD_FLOOR if r < net.ref_t else np.exp(h0[a] * (1 - np.exp(-net.amem[a] * r)) - net.ft[a])
        for k in (0, 1, 2, 10, 59):
            s = k * dt
            expected = -integrate.quad(lam, 0, s, points=[net.ref_t] if s > net.ref_t else None, limit=200)[0]
            # trapezoid with 16 points per bin on a smooth integrand (and one jump at ref_t): 2e-3 relative
            np.testing.assert_allclose(logS0[0, a, k], expected, rtol=2e-3, atol=1e-10, err_msg=f"a={a}, k={k}")
            V_expected = 0.0 if s < net.ref_t else h0[a] * (1 - np.exp(-net.amem[a] * s))
            np.testing.assert_allclose(V0[0, a, k], V_expected, rtol=1e-12)


@pytest.mark.parametrize("V", [0.0, -30.0, 3.7, 20.0, 200.0])
def test_escape_probability_is_stable(V):
    dt = 0.004
    lam, P = fast_np.escape(np.array([V]), 3.7, np.array([False]), dt)
    lam_expected = np.exp(min(V - 3.7, fast_np.LOG_HAZARD_MAX))
    np.testing.assert_allclose(lam, lam_expected, rtol=1e-14)
    # P = 1 - exp(-lam dt) is the cdf of an exponential waiting time at dt
    np.testing.assert_allclose(P, stats.expon(scale=1 / lam_expected).cdf(dt), rtol=1e-12)
    assert 0 < P[0] <= 1 and np.isfinite(np.log(P[0]))
    lam_ref, P_ref = fast_np.escape(np.array([V]), 3.7, np.array([True]), dt)
    np.testing.assert_allclose(P_ref, fast_np.HAZARD_FLOOR * dt, rtol=1e-7)   # refractory: floor rate


def test_log_fire_probability_is_finite_and_exact():
    """log P against scipy's logcdf of the exponential waiting time where that is finite (V - ft down to
    -700, across the switch to the series at lam*dt = SMALL_X), and against log(lam*dt) below."""
    dt, ft = 0.004, 3.7
    V = ft + np.concatenate([np.linspace(-700, 5, 2001), np.log(fast_np.SMALL_X / dt) + [-1e-9, 0, 1e-9]])
    logP = fast_np.log_fire_probability(V, ft, np.zeros(V.shape, bool), dt)
    expected = stats.expon(scale=1 / np.exp(V - ft)).logcdf(dt)
    np.testing.assert_allclose(logP, expected, rtol=1e-12)
    deep = ft + np.array([-746.0, -1e4, -1e8])                  # exp(V - ft) underflows to 0 here
    np.testing.assert_allclose(fast_np.log_fire_probability(deep, ft, np.zeros(3, bool), dt),
                               deep - ft + np.log(dt), rtol=1e-15)
    refractory = fast_np.log_fire_probability(np.array([5.0]), ft, np.array([True]), dt)
    np.testing.assert_allclose(refractory, np.log(fast_np.HAZARD_FLOOR * dt), rtol=1e-12)


@pytest.mark.parametrize("Zbar", [1e-6, 0.01, 0.5, 1.0])
def test_gaussian_nll_matches_scipy(Zbar):
    N, dt = 400, 0.004
    Z = np.array([0.0, Zbar, 0.2])
    sd = np.sqrt(Zbar / N + fast_np.VAR_FLOOR * dt / N)
    np.testing.assert_allclose(fast_np.gaussian_nll(Z, Zbar, N, dt), -stats.norm(Zbar, sd).logpdf(Z), rtol=1e-12)


def test_silent_network_predicts_floor_activity():
    """ft very high: nobody fires, so the expected activity is ~0 and Z = 0 is most likely."""
    net = winner_take_all()
    net = net.with_theta(np.concatenate([net.amem, net.J, net.rp, np.full(3, 200.0)]))
    from src.window import Window
    K, T = 30, 20
    window = Window(net=net, dt=0.004, K=K, y=np.zeros((1, 3, 2, K + T)), I_ext=np.zeros((1, 3, T)))
    step = fast_np.BinStep(net, 0.004, K, np.zeros((1, 3)), "exact")
    h = step.drive(np.zeros((1, 3)), np.zeros((1, 3)), first=True)
    Zbar, _ = step.cohorts(h, np.full((1, 3, K), 0.01))
    assert np.all(Zbar < 1e-9), Zbar
    loss_y, _ = fast_np.losses(net, window, np.full((1, 3, T), 1e-5), "exact")
    assert 0 <= loss_y < 1e-9, loss_y     # silent neurons that never fire are certain


# The decay factor of (V - V*) over n bins at a constant drive, V* = rp + h/amem, from each scheme's
# definition (model.md section 3.2), written without src.fast_np.leak_step: a new scheme adds its line.
CLOSED_FORM_DECAY = {"exact": lambda n, x: np.exp(-n * x),      # x = dt * amem
                     "euler": lambda n, x: (1 - x) ** n}


@pytest.mark.parametrize("I_const", [0.0, 40.0])
@pytest.mark.parametrize("scheme", fast_np.SCHEMES)
def test_potential_follows_the_closed_form(scheme, I_const):
    """No coupling, constant input: every free cohort and every observed neuron that does not fire
    relaxes as V_n = V* + (V0 - V*) * decay(n), to 1e-12, bin after bin (the exact scheme's decay is
    exp(-n dt amem): the closed form of the membrane equation)."""
    assert set(CLOSED_FORM_DECAY) == set(fast_np.SCHEMES)
    net = winner_take_all()
    net = net.with_theta(np.concatenate([[40.0, 50.0, 70.0], np.zeros(3), net.rp, net.ft]))   # J = 0
    dt, K, n_bins = 0.004, 120, 60
    obs_age0 = np.array([[[1, 7], [30, 2], [5, 90]]])                         # (B, M, Nobs), all >= n_ref
    step = fast_np.BinStep(net, dt, K, net.init_rates[None], scheme, Nobs=2, obs_age0=obs_age0)
    V_star = net.rp + net.eps * I_const / net.amem                              # (M,)
    V0, V0_obs = step.V.copy(), step.V_obs.copy()
    for n in range(1, n_bins + 1):
        h = step.drive(np.zeros((1, 3)), np.full((1, 3), I_const), first=(n == 1))
        _, lam = step.cohorts(h, np.zeros((1, 3, K)))
        decay = CLOSED_FORM_DECAY[scheme](n, dt * net.amem)[None, :, None]
        j = np.arange(step.n_ref, K - n + 1)             # cohorts never held at 0, now at index j + n - 1
        expected = V_star[None, :, None] + (V0[..., j] - V_star[None, :, None]) * decay
        np.testing.assert_allclose(step.V[..., j + n - 1], expected, rtol=1e-12, atol=1e-12,
                                   err_msg=f"cohorts after {n} bins")
        step.observed(h)
        np.testing.assert_allclose(step.V_obs, V_star[None, :, None] + (V0_obs - V_star[None, :, None]) * decay,
                                   rtol=1e-12, atol=1e-12, err_msg=f"observed neurons after {n} bins")
        step.advance(lam, np.zeros((1, 3, 2)))
