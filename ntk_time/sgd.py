"""SGD hyper-parameters, learning-rate schedules and minibatch orders.

Shared by the real fine-tuning (`finetune.py`) and the function-space
simulators (`dynamics.py`, `predict.py`), so that a prediction and its ground
truth see the same learning rate at every step and, when replayed, the same
batches. Time is counted in SGD steps everywhere.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ('constant', 'cosine', 'linear')
SAMPLINGS = ('epoch', 'iid')  # how `batch_order` draws minibatches


@dataclasses.dataclass(frozen=True)
class SGD:
  """One point of a fine-tuning hyper-parameter grid.

  Attributes:
    lr: peak learning rate η (> 0).
    batch_size: minibatch size B (1 <= B <= N, checked against N by `validate`).
    momentum: heavy-ball momentum m in [0, 1), optax/PyTorch convention
      v <- m v + g, w <- w - η v.
    nesterov: Nesterov momentum instead of heavy ball.
    weight_decay: λ >= 0, as `optax.add_decayed_weights(λ)` before `optax.sgd`.
    schedule: 'constant', 'cosine' (decay to 0 at `steps`) or 'linear'.
    steps: horizon T in SGD steps.
  """
  lr: float
  batch_size: int
  steps: int
  momentum: float = 0.0
  nesterov: bool = False
  weight_decay: float = 0.0
  schedule: str = 'constant'

  def __post_init__(self):
    if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
      raise ValueError(f'learning rate must be a positive finite number, got lr={self.lr!r}')
    if not (isinstance(self.batch_size, (int, np.integer)) and self.batch_size >= 1):
      raise ValueError(f'batch_size must be a positive integer, got batch_size={self.batch_size!r}')
    if not (isinstance(self.steps, (int, np.integer)) and self.steps >= 1):
      raise ValueError(f'steps (the horizon) must be a positive integer, got steps={self.steps!r}')
    if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
      raise ValueError(f'momentum must be in [0, 1), got momentum={self.momentum!r}')
    if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0.0):
      raise ValueError(f'weight_decay must be >= 0, got weight_decay={self.weight_decay!r}')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'unknown schedule {self.schedule!r}; expected one of {SCHEDULES}')
    if self.nesterov and self.momentum == 0.0:
      raise ValueError('nesterov=True needs momentum > 0')

  def validate(self, n_train: int) -> 'SGD':
    if self.batch_size > n_train:
      raise ValueError(f'batch_size={self.batch_size} is larger than the training set (N={n_train})')
    return self

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def grid(ft) -> list[SGD]:
  """The grid of a `finetune` config block: the product of its lr, batch_size,
  momentum and weight_decay lists, in that order, sharing steps, nesterov and schedule."""
  return [SGD(lr=float(lr), batch_size=int(b), steps=ft.steps, momentum=float(m),
              nesterov=ft.nesterov, weight_decay=float(w), schedule=ft.schedule)
          for lr, b, m, w in itertools.product(ft.lr, ft.batch_size, ft.momentum, ft.weight_decay)]


def run_keys(seed: int) -> dict[str, jax.Array]:
  """The named keys of one experiment seed: 'head' (the fresh head), 'order'
  (batch orders; real seed s uses fold_in(order, s)), 'sde' (paths), 'time' (step timing)."""
  return dict(zip(('head', 'order', 'sde', 'time'), jax.random.split(jax.random.key(seed), 4)))


def learning_rate_fn(hp: SGD) -> optax.Schedule:
  """The schedule η_k as a function of the step count k = 0, 1, ..."""
  if hp.schedule == 'constant':
    return optax.constant_schedule(hp.lr)
  if hp.schedule == 'cosine':
    return optax.cosine_decay_schedule(hp.lr, hp.steps)
  return optax.linear_schedule(hp.lr, 0.0, hp.steps)


def learning_rates(hp: SGD) -> np.ndarray:
  """η_k for k = 0..T-1: [steps] float array, exactly what optax applies."""
  fn = learning_rate_fn(hp)
  return np.asarray(jax.vmap(fn)(jnp.arange(hp.steps)), dtype=np.float64)


def make_optimizer(hp: SGD) -> optax.GradientTransformation:
  sgd = optax.sgd(learning_rate_fn(hp), momentum=hp.momentum or None, nesterov=hp.nesterov)
  if hp.weight_decay:
    return optax.chain(optax.add_decayed_weights(hp.weight_decay), sgd)
  return sgd


def batch_order(key: jax.Array, n: int, batch_size: int, steps: int,
                sampling: str = 'epoch') -> np.ndarray:
  """Minibatch indices for `steps` SGD steps: [steps, B] int32.

  sampling='epoch' (the default, what real fine-tuning usually does): epochs of
  a fresh random permutation, without replacement inside an epoch; the last
  incomplete batch of an epoch is dropped so that every batch has exactly B
  distinct samples. The batches of one epoch are dependent (they share no
  sample), which the SDE's noise, i.i.d. across steps, does not model.
  sampling='iid': every step draws B distinct samples afresh (uniformly,
  without replacement inside the batch), independently of the other steps:
  exactly the model of the SDE, whose per-step mean and covariance with the
  factor c = (N - B)/(N - 1) are those of one such batch.

  Both are plain order arrays: the real runs (`finetune.py`) and the replaying
  simulator (`dynamics.simulate_sgd`) take either unchanged.
  """
  if sampling not in SAMPLINGS:
    raise ValueError(f'unknown sampling {sampling!r}; expected one of {SAMPLINGS}')
  if batch_size > n:
    raise ValueError(f'batch_size={batch_size} is larger than the training set (N={n})')
  if sampling == 'iid':
    keys = jax.random.split(key, steps)
    batches = jax.vmap(lambda k: jax.random.permutation(k, n)[:batch_size])(keys)
    return np.asarray(batches).astype(np.int32)
  per_epoch = n // batch_size
  epochs = -(-steps // per_epoch)
  keys = jax.random.split(key, epochs)
  perms = jax.vmap(lambda k: jax.random.permutation(k, n))(keys)
  batches = np.asarray(perms[:, :per_epoch * batch_size]).reshape(epochs * per_epoch, batch_size)
  return batches[:steps].astype(np.int32)
