"""Per-sample losses and their output-space gradients (residuals).

The loss of a set is the mean over its samples, L(F) = (1/N) Σ_i ℓ(f_i, y_i);
the residual r_i = ∂ℓ/∂f_i drives the function-space dynamics (DESIGN §3).
Real fine-tuning differentiates `loss` through the network, the simulators use
`residual`; both come from here so that they can never disagree.
"""

import jax
import jax.numpy as jnp

LOSSES = ('cross_entropy', 'mse')


def check(name: str) -> str:
  if name not in LOSSES:
    raise ValueError(f'unknown loss {name!r}; expected one of {LOSSES}')
  return name


def loss(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample loss ℓ(f_i, y_i).

  Args:
    name: 'cross_entropy' or 'mse' (½‖f − onehot(y)‖²).
    logits: [..., C] outputs.
    labels: [...] integer labels in 0..C-1.

  Returns:
    [...] per-sample losses.
  """
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if check(name) == 'cross_entropy':
    return -jnp.sum(onehot * jax.nn.log_softmax(logits), axis=-1)
  return 0.5 * jnp.sum((logits - onehot) ** 2, axis=-1)


def residual(name: str, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """r_i = ∂ℓ(f_i, y_i)/∂f_i: [..., C], same shape as `logits`."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  if check(name) == 'cross_entropy':
    return jax.nn.softmax(logits) - onehot
  return logits - onehot


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Fraction of argmax(logits) == labels over the leading axis: scalar."""
  return jnp.mean(jnp.argmax(logits, axis=-1) == labels)
