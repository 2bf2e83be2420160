"""Tests of src/em.py: Adam against its formula, the E-step and the M-step never end worse than they
start and return the best point seen, non-finite losses are rejected, and the EM loop's stop rule."""
import numpy as np
import pytest

from src import fast_np
from src.em import Adam, NonFiniteError, e_step, em, m_step
from src.window import Z_MAX, Z_MIN
from tests.conftest import random_case


# ------------------------------------------------------------------------------------------ Adam
def adam_by_hand(x, grads, lr, beta1=0.9, beta2=0.999, eps=1e-7):
    """Kingma & Ba (2015), Algorithm 1, with the epsilon of Keras (added to sqrt(v) before the bias
    correction of v, i.e. eps / sqrt(1 - beta2^t) after it): the iterates after each gradient."""
    m, v, out = 0.0, 0.0, []
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = m / (1 - beta1 ** t), v / (1 - beta2 ** t)
        x = x - lr * m_hat / (np.sqrt(v_hat) + eps / np.sqrt(1 - beta2 ** t))
        out.append(x)
    return out


def test_adam_steps_equal_the_hand_computation():
    """Three steps on 4 coordinates; the last has gradients of 1e-7, where epsilon matters."""
    x0 = np.array([1.0, -2.0, 0.5, 3.0])
    grads = [np.array([0.3, -4.0, 1e-3, 1e-7]), np.array([-0.1, -3.0, 2e-3, -1e-7]), np.array([0.2, 5.0, 0.0, 1e-7])]
    adam, x = Adam(lr=0.01), x0
    expected = adam_by_hand(x0, grads, lr=0.01)
    for t, (g, want) in enumerate(zip(grads, expected), start=1):
        x = adam.step(x, g)
        np.testing.assert_allclose(x, want, rtol=1e-14, atol=1e-16, err_msg=f"step {t}")
    # step 1 by itself: m_hat = g and sqrt(v_hat) = |g|, so every coordinate moves by lr against the sign
    # of its gradient, shortened where |g| is comparable to epsilon / sqrt(1 - beta2) = 3.2e-6
    g = grads[0]
    np.testing.assert_allclose(x0 - Adam(lr=0.01).step(x0, g), 0.01 * g / (np.abs(g) + 1e-7 / np.sqrt(1e-3)),
                               rtol=1e-12)


def test_adam_matches_keras():
    """The constants are Keras' defaults: the same three steps as keras.optimizers.Adam. Keras computes
    its coefficients in float32 (1 - 0.999 in float32 is off by 1.3e-5 relative), so the displacements
    agree to 1e-4 relative; another beta2 (0.99) or epsilon (1e-8) changes them by more than 1e-2."""
    keras = pytest.importorskip("keras")
    x0 = np.array([1.0, -2.0, 0.5, 3.0])
    grads = [np.array([0.3, -4.0, 1e-3, 1e-7]), np.array([-0.1, -3.0, 2e-3, -1e-7]), np.array([0.2, 5.0, 0.0, 1e-7])]
    variable = keras.Variable(x0, dtype="float64")
    optimizer = keras.optimizers.Adam(learning_rate=0.01)
    adam, x = Adam(lr=0.01), x0
    for t, g in enumerate(grads, start=1):
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(g, dtype="float64"), variable)])
        x = adam.step(x, g)
        np.testing.assert_allclose(x - x0, np.asarray(variable.numpy()) - x0, rtol=1e-4, err_msg=f"step {t}")


# -------------------------------------------------------------- the steps on the real likelihood
@pytest.fixture(scope="module")
def tiny():
    """A random window of 20 bins (30 age bins), theta in [0.4, 2] x truth, and its model."""
    from src.LIFmesoCell import MesoModel
    net, window, theta, Z = random_case(seed=21, B=1, Nobs=2, T=20, K=30, with_input=True)
    return net, window, theta, Z, Recording(MesoModel(window, theta, Z, "exact"))


class Recording:
    """The model, with every evaluation of value_and_grad recorded: (wrt, theta, Z, loss)."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def losses(self, theta=None, Z=None):
        return self.model.losses(theta=theta, Z=Z)

    def value_and_grad(self, wrt, theta=None, Z=None):
        loss_y, loss_Z, grad = self.model.value_and_grad(wrt, theta=theta, Z=Z)
        self.calls.append((wrt, np.array(theta, float), np.array(Z, float), float(loss_y + loss_Z)))
        return loss_y, loss_Z, grad


def reference_loss(net, window, theta, Z):
    return sum(fast_np.losses(net.with_theta(theta), window, Z, "exact"))


def test_mstep_returns_the_best_point_it_evaluated_and_never_a_worse_one(tiny):
    net, window, theta0, Z, model = tiny
    bounds = list(zip(0.4 * net.theta, 2.0 * net.theta))
    model.calls.clear()
    theta, info = m_step(model, theta0, Z, bounds, maxiter=8)
    evaluated = [loss for wrt, _, _, loss in model.calls]
    assert len(evaluated) == info["nfev"] >= 2, info
    # the start and the end, recomputed by the numpy reference
    np.testing.assert_allclose(info["loss_start"], reference_loss(net, window, theta0, Z), rtol=1e-9)
    np.testing.assert_allclose(info["loss"], reference_loss(net, window, theta, Z), rtol=1e-9)
    assert info["loss"] < info["loss_start"], info          # 8 iterations from a random start do lower it
    assert info["loss"] == pytest.approx(min(evaluated), rel=1e-12), (info["loss"], min(evaluated))
    assert np.all(theta >= 0.4 * net.theta) and np.all(theta <= 2.0 * net.theta)
    assert info["loss"] == pytest.approx(info["loss_y"] + info["loss_Z"], rel=1e-15)


def test_mstep_at_a_minimum_of_the_box_keeps_its_start():
    """theta0 already minimises the stand-in's loss within the box (its minimum is outside): the M-step
    returns theta0's loss, never a higher one."""
    model = Quadratic(theta_star=np.full(4, 5.0))
    theta0 = np.full(4, 2.0)                  # the corner of the box [0.1, 2]^4 nearest to theta_star
    theta, info = m_step(model, theta0, np.zeros((1, 1, 2)), [(0.1, 2.0)] * 4, maxiter=20)
    np.testing.assert_array_equal(theta, theta0)
    assert info["loss"] == info["loss_start"] == model.losses(theta0, None)[0]


def test_estep_returns_the_best_latent_it_evaluated(tiny):
    """A learning rate that overshoots (0.1 on Z ~ 0.01; measured: best at iteration 2 of 6): the last
    iterates are worse than the best one, and the E-step returns the best, with its loss, never worse
    than Z0's."""
    net, window, theta, Z0, model = tiny
    model.calls.clear()
    Z, info = e_step(model, theta, Z0, lr=0.1, maxiters=40, itertol=3)
    losses = [loss for _, _, _, loss in model.calls]
    history = [a + b for a, b in info["history"]]
    np.testing.assert_allclose(history, losses, rtol=1e-15)
    best = int(np.argmin(losses))
    assert best < len(losses) - 1, losses                  # the test does return to an earlier iterate
    np.testing.assert_array_equal(Z, model.calls[best][2])
    assert info["loss"] == losses[best] <= losses[0], (info["loss"], losses[0])
    np.testing.assert_allclose(info["loss"], reference_loss(net, window, theta, Z), rtol=1e-9)
    assert info["steps"] == len(losses) == best + 1 + 3, (info["steps"], best)     # stopped by itertol
    assert np.all((Z >= Z_MIN) & (Z <= Z_MAX))


def test_estep_projects_on_the_latent_box():
    """The stand-in pulls Z towards 2 and -1: the iterates stay in [Z_MIN, Z_MAX], and stop at its walls."""
    model = Quadratic(Z_star=np.array([[[2.0, -1.0, 0.5]]]))
    Z, info = e_step(model, np.zeros(4), np.full((1, 1, 3), 0.5), lr=0.2, maxiters=200, itertol=3)
    for _, _, Z_i in model.evaluated:
        assert np.all((Z_i >= Z_MIN) & (Z_i <= Z_MAX)), Z_i
    np.testing.assert_allclose(Z, [[[Z_MAX, Z_MIN, 0.5]]], atol=1e-3)


# -------------------------------------------------------------------------- non-finite EM steps
class Quadratic:
    """A stand-in for MesoModel: loss = |theta - theta_star|^2 + |Z - Z_star|^2 (loss_Z = 0)."""

    def __init__(self, theta_star=0.0, Z_star=0.0):
        self.theta_star, self.Z_star, self.evaluated = theta_star, Z_star, []

    def _loss(self, theta, Z):
        theta, Z = np.asarray(theta, float), np.asarray(Z, float)
        self.evaluated.append((np.sum((theta - self.theta_star) ** 2), theta, Z))
        return (np.sum((theta - self.theta_star) ** 2) + np.sum((Z - self.Z_star) ** 2),
                2 * (theta - self.theta_star), 2 * (Z - self.Z_star))

    def losses(self, theta, Z):
        return self._loss(theta, 0.0 if Z is None else Z)[0], 0.0

    def value_and_grad(self, wrt, theta, Z):
        loss, g_theta, g_Z = self._loss(theta, Z)
        return loss, 0.0, g_theta if wrt == "theta" else g_Z


class NaNRegion:
    """A stand-in for MesoModel: loss = |theta - 2|^2 + |Z - 0.9|^2, NaN where theta[0] > 1.5 or Z > 0.7,
    so both steps head for the NaN region."""

    def _loss(self, theta, Z):
        theta, Z = np.asarray(theta, float), np.asarray(Z, float)
        if theta[0] > 1.5 or Z.max() > 0.7:
            return np.nan, np.full(theta.shape, np.nan), np.full(Z.shape, np.nan)
        return np.sum((theta - 2) ** 2) + np.sum((Z - 0.9) ** 2), 2 * (theta - 2), 2 * (Z - 0.9)

    def losses(self, theta, Z):
        return self._loss(theta, Z)[0], 0.0

    def value_and_grad(self, wrt, theta, Z):
        loss, g_theta, g_Z = self._loss(theta, Z)
        return loss, 0.0, g_theta if wrt == "theta" else g_Z


def test_mstep_rejects_a_nonfinite_loss_and_keeps_the_best_finite_point():
    model, Z = NaNRegion(), np.full((1, 1, 4), 0.5)
    theta0 = np.ones(4)
    theta, info = m_step(model, theta0, Z, [(0.1, 10.0)] * 4, maxiter=50)
    assert info["nonfinite"] is not None, info
    assert np.all(np.isfinite(theta)) and theta[0] <= 1.5, theta
    assert np.isfinite(info["loss"]) and info["loss"] <= info["loss_start"], info
    assert info["loss"] == pytest.approx(model.losses(theta, Z)[0])
    with pytest.raises(NonFiniteError):
        m_step(model, np.full(4, 1.6), Z, [(0.1, 10.0)] * 4)


def test_estep_rejects_a_nonfinite_loss_and_returns_the_best_latent():
    model, theta = NaNRegion(), np.ones(4)
    Z, info = e_step(model, theta, np.full((1, 1, 4), 0.5), lr=0.05, maxiters=100)
    assert info["nonfinite"] is not None and info["steps"] == info["nonfinite"], info
    assert np.all(Z <= 0.7) and np.isfinite(info["loss"]), (Z, info)
    assert info["loss"] == pytest.approx(model.losses(theta, Z)[0])
    assert info["loss"] == min(a + b for a, b in info["history"]) < info["history"][0][0]
    with pytest.raises(NonFiniteError):
        e_step(model, theta, np.full((1, 1, 4), 0.8))


# ------------------------------------------------------------------------------------- the loop
def test_em_lowers_the_loss_and_stops_when_a_step_no_longer_does():
    """On the stand-in (minimum theta = 1.5, Z = 0.3) EM reaches the minimum, then one more step does not
    improve and the loop stops before max_steps; every step's loss is that of its (theta, Z)."""
    model = Quadratic(theta_star=np.full(4, 1.5), Z_star=0.3)
    logged, completed = [], []
    theta, Z, steps = em(model, np.ones(4), np.full((1, 1, 3), 0.5), [(0.1, 10.0)] * 4, max_steps=50,
                         m_options={"maxiter": 50}, e_options={"lr": 0.01, "maxiters": 300, "itertol": 3},
                         log=logged.append, on_em_step=lambda step, Z: completed.append(step["em_step"]))
    losses = [s["loss"] for s in steps]
    assert [s["em_step"] for s in steps] == completed == list(range(len(steps))) and len(steps) < 50
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses
    assert steps[-1]["loss"] >= steps[-2]["loss"], losses                  # the stop rule
    assert logged[-1] == f"EM step {steps[-1]['em_step']} did not improve the loss: stop", logged
    np.testing.assert_allclose(theta, 1.5, atol=1e-6)
    np.testing.assert_allclose(Z, 0.3, atol=0.01)      # an Adam step moves Z by about lr = 0.01 at most
    np.testing.assert_array_equal(theta, steps[-1]["theta"])
    assert steps[-1]["loss"] == model.losses(theta, Z)[0]
    # a resumed loop goes on at step len(done), and a finished one runs no step
    _, _, more = em(model, np.ones(4), np.full((1, 1, 3), 0.5), [(0.1, 10.0)] * 4, max_steps=2,
                    m_options={"maxiter": 5}, e_options={"lr": 0.05, "maxiters": 5}, done=steps[:1], log=logged.append)
    assert [s["em_step"] for s in more] == [0, 1] and more[0] is steps[0]
    _, _, again = em(model, theta, Z, [(0.1, 10.0)] * 4, max_steps=100, m_options={}, e_options={}, done=steps,
                     log=logged.append)
    assert again == steps


# -- Monte Carlo EM by stochastic approximation (the SMC E-step) -------------------------------------
def test_saem_weights_are_the_stochastic_approximation_by_hand():
    """Step sizes 1, 1, 1, 1/2, 1/3, ...; the weights c_e of the draws in Q_e follow
    c <- (1 - gamma) c, c_new = gamma, with the memory's truncation renormalising: after steps 0..5
    (memory 4) the kept steps 2..5 weigh (1*1/2*2/3*3/4, 1/2*2/3*3/4, 1/3*3/4, 1/4) / their sum."""
    from src.em import DrawMemory, saem_step_size
    assert [saem_step_size(e) for e in range(6)] == [1.0, 1.0, 1.0, 0.5, 1 / 3, 0.25]
    Z0 = np.zeros((1, 3, 5))
    memory = DrawMemory(Z0, draws=2, memory=4)
    for e in range(6):
        memory.add(np.full((2, 1, 3, 5), float(e)), saem_step_size(e))
    c2 = 1.0 * 0.5 * (2 / 3) * 0.75
    c3 = 0.5 * (2 / 3) * 0.75
    c4 = (1 / 3) * 0.75
    c5 = 0.25
    expected = np.array([c2, c3, c4, c5]) / (c2 + c3 + c4 + c5)
    np.testing.assert_allclose(memory.c, expected, rtol=1e-14)
    Z, w = memory.stacked()
    assert Z.shape == (4 * 2 * 1, 3, 5) and w.shape == (8,)
    np.testing.assert_allclose(w, np.repeat(expected / 2, 2), rtol=1e-14)
    np.testing.assert_array_equal(Z[:, 0, 0], [2, 2, 3, 3, 4, 4, 5, 5])
    np.testing.assert_allclose(memory.mean(), np.full((1, 3, 5), expected @ [2, 3, 4, 5]), rtol=1e-14)
    fresh = DrawMemory(Z0, draws=2, memory=4)                 # before any E-step: the initial latent only
    Z, w = fresh.stacked()
    np.testing.assert_array_equal(w, [0, 0, 0, 0, 0, 0, 0.5, 0.5])


def test_batch_weights_are_the_weighted_mean_of_the_numpy_losses():
    """MesoModel with batch weights w: loss = sum_b w_b (loss of batch b alone), against fast_np.losses
    batch by batch (rtol 1e-12), and the gradient with respect to theta (one amem, J, rp and ft) against
    central finite differences of that weighted numpy loss (rtol 1e-5)."""
    from src.LIFmesoCell import MesoModel
    from src.window import Window
    net, window, theta, Z = random_case(seed=3, B=3, Nobs=2, T=25, K=20)
    w = np.array([0.5, 0.2, 0.3])
    model = MesoModel(window, theta, Z, "exact", batch_weights=w)

    def weighted(th):
        total = np.zeros(2)
        for b in range(3):
            one = Window(net=net, dt=window.dt, K=window.K, y=window.y[b:b + 1], I_ext=window.I_ext[b:b + 1])
            total += w[b] * np.array(fast_np.losses(net.with_theta(th), one, Z[b:b + 1], "exact"))
        return total
    np.testing.assert_allclose(model.losses(), weighted(theta), rtol=1e-12)
    np.testing.assert_allclose(fast_np.losses(net.with_theta(theta), window, Z, "exact", w), weighted(theta),
                               rtol=1e-12)
    _, _, grad = model.value_and_grad("theta")
    step = 1e-6 * np.abs(theta)
    checked = [0, 4, 8, 11]
    fd = [(weighted(theta + step * e).sum() - weighted(theta - step * e).sum()) / (2 * step[i])
          for i, e in zip(checked, np.eye(theta.size)[checked])]
    np.testing.assert_allclose(np.asarray(grad)[checked], fd, rtol=1e-5)
    with pytest.raises(ValueError, match="batch weights"):
        model.set_batch_weights([0.5, 0.5, 0.5])


def test_numeric_m_step_minimises_the_weighted_loss_of_the_draws():
    """--mstep_grad numeric with the SMC E-step's batch weights: a batch of weight 0 (a memory slot not
    yet filled) does not pull theta. The objective on batches (1, 0) is the first batch's alone (rtol
    1e-12), and the M-step lands where the first batch's lands (2%: finite differences of the two
    sums round apart and L-BFGS-B follows them 0.3% apart here; with the weights ignored, 35% apart),
    at the model's weighted loss."""
    from src.LIFmesoCell import MesoModel
    from src.window import Window
    net, window, theta, Z = random_case(seed=5, B=2, Nobs=2, T=25, K=20)
    Z[1] = 0.04                                          # the second batch: a latent far from the first
    bounds = list(zip(0.4 * net.theta, 2.0 * net.theta))
    weighted = MesoModel(window, theta, Z, "exact", batch_weights=[1.0, 0.0])
    first = Window(net=net, dt=window.dt, K=window.K, y=window.y[:1], I_ext=window.I_ext[:1])
    alone = MesoModel(first, theta, Z[:1], "exact")
    np.testing.assert_allclose(fast_np.objective(theta, net, window, Z, "exact", weighted.batch_weights),
                               fast_np.objective(theta, net, first, Z[:1], "exact"), rtol=1e-12)
    theta_w, info_w = m_step(weighted, theta, Z, bounds, maxiter=5, grad="numeric")
    theta_1, info_1 = m_step(alone, theta, Z[:1], bounds, maxiter=5, grad="numeric")
    assert not np.allclose(theta_1, theta)                                  # the M-step moved
    np.testing.assert_allclose(theta_w, theta_1, rtol=2e-2)
    np.testing.assert_allclose(info_w["loss"], sum(weighted.losses(theta=theta_w, Z=Z)), rtol=1e-12)
