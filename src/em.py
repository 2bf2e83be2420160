"""The two steps of EM with a point estimate of the latent (shared/docs/model.md section 4).

Both minimise the same loss, loss_y + loss_Z of src/LIFmesoCell.MesoModel:
    m_step  over theta with Z fixed: scipy.optimize.minimize in a box, with the exact gradient
    e_step  over Z with theta fixed: projected Adam, early stopping, return to the best Z
"""
import time

import numpy as np
from scipy.optimize import minimize

from . import fast_np
from .window import Z_MAX, Z_MIN


def m_step(model, theta0, Z, bounds, maxiter=200, method="L-BFGS-B", grad="exact"):
    """Minimise the loss over theta from theta0 with Z fixed.

    grad="exact": the TensorFlow loss and its autodiff gradient; grad="numeric": the numpy reference
    with finite-difference gradients, as the original project did. Returns (theta, info) where info
    holds loss_y, loss_Z, loss, nit, nfev, message and seconds. The result is never worse than theta0.
    """
    start = time.time()
    if grad == "exact":
        def fun(theta):
            loss_y, loss_Z, g = model.value_and_grad("theta", theta=theta, Z=Z)
            return float(loss_y + loss_Z), np.asarray(g, dtype=float)
        jac = True
    elif grad == "numeric":
        net, window = model.window.net, model.window
        fun = lambda theta: fast_np.objective(theta, net, window, Z)  # noqa: E731
        jac = None
    else:
        raise ValueError(f"grad must be 'exact' or 'numeric', got {grad!r}")
    loss0 = sum(model.losses(theta=theta0, Z=Z))
    res = minimize(fun, np.asarray(theta0, float), jac=jac, method=method, bounds=bounds,
                   options={"maxiter": maxiter})
    theta = res.x if np.isfinite(res.fun) and res.fun <= loss0 else np.asarray(theta0, float)
    loss_y, loss_Z = model.losses(theta=theta, Z=Z)
    return theta, {"loss_y": loss_y, "loss_Z": loss_Z, "loss": loss_y + loss_Z, "loss_start": loss0,
                   "nit": int(res.nit), "nfev": int(res.nfev), "message": str(res.message),
                   "seconds": time.time() - start}


class Adam:
    """Adam (Kingma & Ba, 2015) on a numpy array, with Keras' default constants."""

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-7):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = self.v = None
        self.t = 0

    def step(self, x, grad):
        if self.m is None:
            self.m, self.v = np.zeros_like(x), np.zeros_like(x)
        self.t += 1
        self.m = self.beta1 * self.m + (1 - self.beta1) * grad
        self.v = self.beta2 * self.v + (1 - self.beta2) * grad ** 2
        lr_t = self.lr * np.sqrt(1 - self.beta2 ** self.t) / (1 - self.beta1 ** self.t)
        return x - lr_t * self.m / (np.sqrt(self.v) + self.eps)


def e_step(model, theta, Z0, lr=1e-3, maxiters=200, itertol=3, on_step=None):
    """Minimise the loss over Z from Z0 with theta fixed, by Adam projected on [Z_MIN, Z_MAX].

    Stops after `itertol` steps without a new best loss, or after `maxiters` steps, and returns the
    best Z seen (Z0 included) with the history of (loss_y, loss_Z) per step. on_step(i, Z, loss_y,
    loss_Z) is called after each evaluation, for logging and plots.
    """
    start = time.time()
    adam = Adam(lr)
    Z = np.asarray(Z0, float)
    best_Z, best_loss, since_best, history = Z, np.inf, 0, []
    for i in range(maxiters):
        loss_y, loss_Z, grad = model.value_and_grad("Z", theta=theta, Z=Z)
        loss_y, loss_Z, grad = float(loss_y), float(loss_Z), np.asarray(grad)
        history.append((loss_y, loss_Z))
        if on_step is not None:
            on_step(i, Z, loss_y, loss_Z)
        if not (np.isfinite(loss_y + loss_Z) and np.all(np.isfinite(grad))):
            break                                      # keep the best Z so far; never step on NaN
        if loss_y + loss_Z < best_loss:
            best_Z, best_loss, since_best = Z, loss_y + loss_Z, 0
        else:
            since_best += 1
            if since_best >= itertol:
                break
        Z = np.clip(adam.step(Z, grad), Z_MIN, Z_MAX)
    return best_Z, {"loss": best_loss, "steps": len(history), "history": history,
                    "seconds": time.time() - start}
