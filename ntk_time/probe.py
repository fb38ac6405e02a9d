"""The linear probe: a Dense head fitted on frozen features (the LP of LP-FT).

For `finetune.head_init='linear_probe'` the head (kernel W [D, C], bias b [C])
is fitted first on the pretrained features Φ [N, D] of the target training set,

    min_{W, b}  (1/N) Σ_i ℓ(Wᵀ φ_i + b, y_i) + (λ/2) ‖W‖²_F,

with the fine-tuning loss ℓ (losses.loss) and the bias unpenalised, and the
whole network is fine-tuned from there (Kumar et al. 2022, arXiv 2202.10054).
The problem is convex: ridge regression for 'mse', solved in closed form;
multinomial logistic regression for 'cross_entropy', solved by full-batch
L-BFGS (optax.lbfgs) to a gradient norm of `tol`. Both in float64 and
deterministic, so that the prediction and the real runs, which both start
from this head, start from the same one.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from ntk_time import compat
from ntk_time import losses


def objective(kernel: jax.Array, bias: jax.Array, features: jax.Array, labels: jax.Array, *,
              loss: str, l2: float) -> jax.Array:
  """The probe's objective at (kernel [D, C], bias [C]) on features [N, D], labels [N]."""
  fit = jnp.mean(losses.loss(loss, features @ kernel + bias, labels))
  return fit + 0.5 * l2 * jnp.sum(kernel**2)


def _ridge(features, labels, num_classes, l2):
  # Normal equations of the objective for mse: (Φ̃ᵀΦ̃ + NλD) [W; b] = Φ̃ᵀY, Φ̃ = [Φ 1],
  # D = diag(1, ..., 1, 0) (the bias unpenalised).
  n, d = features.shape
  phi = np.concatenate([features, np.ones((n, 1))], axis=1)
  penalty = n * l2 * np.diag(np.r_[np.ones(d), 0.0])
  onehot = np.eye(num_classes)[labels]
  w = np.linalg.solve(phi.T @ phi + penalty, phi.T @ onehot)
  return w[:d], w[d], 0


def _logistic(features, labels, num_classes, l2, tol, max_iter):
  f = lambda p: objective(p['kernel'], p['bias'], features, labels, loss='cross_entropy', l2=l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(f)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
    return optax.apply_updates(params, updates), state

  def running(carry):
    _, state = carry
    k = otu.tree_get(state, 'count')
    grad = otu.tree_get(state, 'grad')
    return (k == 0) | ((k < max_iter) & (otu.tree_l2_norm(grad) >= tol))

  d = features.shape[1]
  init = {'kernel': jnp.zeros((d, num_classes)), 'bias': jnp.zeros(num_classes)}
  params, state = jax.lax.while_loop(running, step, (init, opt.init(init)))
  return params['kernel'], params['bias'], otu.tree_get(state, 'count')


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, *, loss: str, l2: float,
        tol: float = 1e-10, max_iter: int = 5000) -> tuple[np.ndarray, np.ndarray, dict]:
  """The probe's head on `features` [N, D] and integer `labels` [N].

  Args:
    features: [N, D] frozen features of the training set.
    labels: [N] ints in 0..num_classes-1.
    num_classes: C.
    loss: 'cross_entropy' (logistic regression) or 'mse' (ridge).
    l2: λ > 0, the L2 strength on the kernel.
    tol: L-BFGS stops at this gradient norm of the centred problem (cross-entropy
      only; 'grad_norm' reports the original problem's).
    max_iter: and after at most this many iterations.

  Returns:
    (kernel [D, C], bias [C], report) in float64; report has 'seconds',
    'iterations' (0 for the closed form), 'grad_norm' and 'objective' at the
    solution, and 'train_acc' of the probe.

  Raises:
    RuntimeError: L-BFGS did not reach `tol` within `max_iter` iterations.
  """
  losses.check(loss)
  if not l2 > 0:
    raise ValueError(f'the probe needs an L2 strength > 0, got l2={l2!r}')
  start = time.perf_counter()
  with compat.enable_x64():
    x = jnp.asarray(features, jnp.float64)
    y = jnp.asarray(labels, jnp.int32)
    # Solved on centred features, then b -= μᵀW: the same problem (the bias is free), but
    # ReLU features share a large mean that makes the bias direction ill-conditioned.
    mu = jnp.mean(x, axis=0)
    if loss == 'mse':
      kernel, bias, iters = _ridge(np.asarray(x - mu), np.asarray(labels), num_classes, l2)
    else:
      kernel, bias, iters = jax.jit(_logistic, static_argnums=(2, 4, 5))(
          x - mu, y, num_classes, l2, tol, max_iter)
      iters = int(iters)
    bias = bias - mu @ kernel
    value, grads = jax.value_and_grad(objective, argnums=(0, 1))(
        jnp.asarray(kernel), jnp.asarray(bias), x, y, loss=loss, l2=l2)
    grad_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in grads)))
    acc = float(losses.accuracy(x @ jnp.asarray(kernel) + jnp.asarray(bias), y))
    kernel, bias = np.asarray(kernel, np.float64), np.asarray(bias, np.float64)
  if iters >= max_iter:
    raise RuntimeError(f'the linear probe did not converge: gradient norm {grad_norm:.2e} '
                       f'after max_iter={max_iter} L-BFGS iterations (tol={tol:g}, l2={l2:g})')
  report = {'seconds': time.perf_counter() - start, 'iterations': iters, 'grad_norm': grad_norm,
            'objective': float(value), 'train_acc': acc}
  return kernel, bias, report
