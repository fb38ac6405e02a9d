"""From one kernel to every configuration of a grid: curves, training times, bands.

`predict(lin, ...)` simulates each SGD configuration on the linearised model
(`dynamics.py`) and summarises the paths: mean and 5/50/95% quantile curves,
and the training time under each definition of DESIGN §3.3, on the mean curve
and as quantiles over paths. Times are in SGD steps; `to_seconds` converts.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse.linalg

from ntk_time import dynamics
from ntk_time import losses
from ntk_time import ntk
from ntk_time import sgd

METHODS = ('sde', 'exact', 'full_batch', 'head_aware')
CURVES = ('train_loss', 'train_acc', 'test_loss', 'test_acc')
QUANTILES = (0.05, 0.5, 0.95)


@dataclasses.dataclass(frozen=True)
class Targets:
  """What "trained" means.

  eps: T_eps = min{t : |L_t - L_T| < eps} on the training loss.
  target_loss: first step with L_t <= target_loss (None: not computed).
  eps_acc, target_acc: the same two on the training accuracy (>= target).
  """
  eps: float = 0.05
  target_loss: float | None = None
  eps_acc: float = 0.01
  target_acc: float | None = None

  @property
  def definitions(self) -> tuple[str, ...]:
    """The names `training_times` returns, in order."""
    return ('t_eps', 't_eps_acc') + (('t_target_loss',) if self.target_loss is not None else ()) \
        + (('t_target_acc',) if self.target_acc is not None else ())

  def __post_init__(self):
    for name in ('eps', 'eps_acc'):
      v = getattr(self, name)
      if not (np.isfinite(v) and v > 0):
        raise ValueError(f'{name} must be > 0, got {name}={v!r}')


def t_eps(steps: np.ndarray, curve: np.ndarray, eps: float) -> int:
  """The paper's T_eps = min{t : |L_t - L_T| < eps}, T = steps[-1].

  Args:
    steps: [E] evaluated steps, increasing; curve: [E] values at those steps.

  Returns:
    The first evaluated step within eps of the value at the horizon (the
    horizon itself if nothing earlier is, and when the value at the horizon is
    not finite: nothing is within eps of a NaN).
  """
  curve = np.asarray(curve, np.float64)
  with np.errstate(invalid='ignore'):  # inf - inf: NaN, never close
    close = np.abs(curve - curve[-1]) < eps
  return int(steps[np.argmax(close)]) if close.any() else int(steps[-1])


def first_reaching(steps: np.ndarray, curve: np.ndarray, target: float,
                   below: bool = True) -> int | None:
  """First evaluated step with curve <= target (>= if not below); None if never."""
  hit = np.asarray(curve) <= target if below else np.asarray(curve) >= target
  return int(steps[np.argmax(hit)]) if hit.any() else None


def training_times(steps: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                   targets: Targets) -> dict[str, int | None]:
  """All definitions of training time for one loss / accuracy curve pair ([E] each)."""
  out = {'t_eps': t_eps(steps, loss, targets.eps),
         't_eps_acc': t_eps(steps, acc, targets.eps_acc)}
  if targets.target_loss is not None:
    out['t_target_loss'] = first_reaching(steps, loss, targets.target_loss, below=True)
  if targets.target_acc is not None:
    out['t_target_acc'] = first_reaching(steps, acc, targets.target_acc, below=False)
  return out


def to_seconds(steps: float | None, seconds_per_step: float) -> float | None:
  """Predicted seconds = predicted SGD steps × measured seconds per real step."""
  return None if steps is None else float(steps) * seconds_per_step


def curvature_bound(loss: str) -> float:
  """Largest eigenvalue of ∂²ℓ/∂f² over all f: 1 for MSE, 1/2 for cross-entropy."""
  return 1.0 if losses.check(loss) == 'mse' else 0.5


def largest_eigenvalue(k: np.ndarray) -> float:
  """λ_max of Θ ([N, N, C, C], or a class-traced K [N, N]: λ_max(K ⊗ I_C) = λ_max(K)).

  Lanczos (scipy's eigsh) beyond 1,000 rows, where a full eigendecomposition
  of the N·C × N·C kernel would cost more than the whole simulation.
  """
  flat = ntk.flatten(np.asarray(k)).astype(np.float64)
  if len(flat) <= 1000:
    return float(np.linalg.eigvalsh(flat)[-1])
  return float(scipy.sparse.linalg.eigsh(flat, k=1, which='LA', return_eigenvectors=False,
                                         tol=1e-8)[0])


def lr_limit(max_eig: float, n: int, loss: str, momentum: float = 0.0) -> float:
  """The largest η for which full-batch linearised SGD cannot diverge.

  Gradient descent with momentum m on an objective whose curvature is at most
  h λ_max(Θ)/N is stable for η < 2 (1 + m) N / (h λ_max) (heavy ball on a
  quadratic; a sufficient condition for the convex cross-entropy).
  """
  return 2.0 * (1.0 + momentum) * n / (curvature_bound(loss) * max_eig)


def _summarise(curves: dict, steps: np.ndarray, targets: Targets) -> tuple[dict, dict]:
  """Mean / quantile curves and training-time bands over the paths ([S, E] each)."""
  summary = {}
  for name in CURVES:
    c = np.asarray(curves[name], np.float64)
    summary[name] = {'mean': c.mean(0), **{f'q{int(q * 100):02d}': np.quantile(c, q, axis=0)
                                           for q in QUANTILES}}
  mean_times = training_times(steps, summary['train_loss']['mean'],
                              summary['train_acc']['mean'], targets)
  per_path = [training_times(steps, lo, ac, targets) for lo, ac in
              zip(np.asarray(curves['train_loss']), np.asarray(curves['train_acc']))]
  times = {}
  for name, t_mean in mean_times.items():
    # A path that never reaches the target counts as later than every step.
    vals = np.array([np.inf if p[name] is None else p[name] for p in per_path], np.float64)
    with np.errstate(invalid='ignore'):  # inf - inf between two never-reaching paths: NaN, None
      qs = {f'q{int(q * 100):02d}': np.quantile(vals, q) for q in QUANTILES}
    times[name] = {'mean_curve': t_mean,
                   **{k: (None if not np.isfinite(v) else float(v)) for k, v in qs.items()}}
  return summary, times


def _diverged(curves: dict) -> bool:
  loss = np.asarray(curves['train_loss'], np.float64)
  if not np.all(np.isfinite(loss)):
    return True
  return bool(np.any(loss > 10.0 * np.maximum(loss[:, :1], 1.0)))


def _sde_grid(configs, key, num_paths, dt, population, arrays, *, loss, eval_every):
  """The SDE's paths of every configuration, one simulation per horizon.

  Configuration i has the paths of keys split(fold_in(key, i), num_paths)
  whether simulated alone or with the others. Returns per configuration its
  curves ([num_paths, E] each) and its share of the simulation's seconds.
  """
  curves, seconds = [None] * len(configs), [0.0] * len(configs)
  by_horizon = {}
  for i, hp in enumerate(configs):
    by_horizon.setdefault(hp.steps, []).append(i)
  for group in by_horizon.values():
    keys = jnp.concatenate([jax.random.split(jax.random.fold_in(key, i), num_paths)
                            for i in group])
    per_path = lambda f, group=group: np.repeat(np.stack([f(configs[i]) for i in group]),
                                                num_paths, axis=0)
    start = time.perf_counter()
    c, _, _ = dynamics.simulate_sde(
        keys, per_path(sgd.learning_rates), batch_size=per_path(lambda h: h.batch_size),
        momentum=per_path(lambda h: h.momentum), weight_decay=per_path(lambda h: h.weight_decay),
        dt=dt, population=population, loss=loss, eval_every=eval_every, **arrays)
    share = (time.perf_counter() - start) / len(group)
    for j, i in enumerate(group):
      curves[i] = {name: v[j * num_paths:(j + 1) * num_paths] for name, v in c.items()}
      seconds[i] = share
  return curves, seconds


def predict(lin: ntk.Linearization, y_train: np.ndarray, y_test: np.ndarray,
            configs: list[sgd.SGD], *, key: jax.Array | None = None, method: str = 'sde',
            loss: str, eval_every: int, targets: Targets, num_paths: int = 32, dt: int = 1,
            orders: list[np.ndarray] | None = None, dtype=np.float32,
            population: int | None = None) -> list[dict]:
  """Predicts every configuration of a grid from one linearisation.

  Args:
    lin: kernel and initial outputs (ntk.linearize).
    y_train: [N] and y_test: [N_test] int labels.
    configs: the grid; each config's steps is its horizon.
    key: PRNG key, folded with the config's index (needed unless method is
      'full_batch' or every order is given).
    method: 'sde' (the paper's SDE, num_paths paths), 'exact' (the minibatch
      simulator on `orders[i]` [S, T, B], or num_paths orders drawn from key),
      'full_batch' (the deterministic B = N limit), 'head_aware' (the
      head-aware model of dynamics.simulate_head_aware on orders like 'exact';
      needs a linearisation made with features_fn).
    loss, eval_every, targets: see dynamics / Targets.
    dt: SGD steps per Euler–Maruyama step (sde only; the configurations of one
      horizon are simulated together, see dynamics.simulate_sde).
    dtype: of the simulation (np.float64 needs jax_enable_x64).
    population: sde only: the size N of the training set that the kernel's
      samples are a random subset of (subset.py's replica prediction); the
      batch size is checked against it.

  Returns:
    One dict per configuration: 'hparams', 'method', 'steps' [E], 'curves'
    (per name: 'mean', 'q05', 'q50', 'q95', each [E]), 'times' (per
    definition: 'mean_curve' and 'q05'/'q50'/'q95' over paths, in SGD steps,
    None when not reached), 'diverged', 'lr_limit', 'seconds' (for the sde, its
    share of the grid's simulation). A diverging configuration has curves and
    times None and says so.
  """
  if method not in METHODS:
    raise ValueError(f'unknown prediction method {method!r}; expected one of {METHODS}')
  if not (isinstance(num_paths, (int, np.integer)) and num_paths >= 1):
    raise ValueError(f'num_paths must be a positive integer, got {num_paths!r}')
  losses.check(loss)
  if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError('dtype=float64 needs 64-bit JAX: run inside jax.experimental.enable_x64() '
                     'or set jax_enable_x64')
  n = len(y_train)
  # The SDE simulates a class-traced kernel as K; the minibatch simulators need K ⊗ I_C.
  k_tt, k_st = (lin.full_kernels() if method in ('exact', 'full_batch')
                else (lin.k_train_train, lin.k_test_train))
  max_eig = largest_eigenvalue(k_tt)
  arrays = dict(k_train_train=k_tt.astype(dtype), fx_train_0=lin.fx_train_0.astype(dtype),
                y_train=y_train, jw0_train=lin.jw0_train.astype(dtype),
                k_test_train=k_st.astype(dtype), fx_test_0=lin.fx_test_0.astype(dtype),
                y_test=y_test, jw0_test=lin.jw0_test.astype(dtype))
  if method == 'head_aware':
    if not lin.head_aware:
      raise ValueError("method 'head_aware' needs ntk.linearize(..., features_fn=...)")
    k_phi, k_phi_st = lin.feature_kernels()
    head_arrays = dict(k_phi=k_phi.astype(dtype), features_train_0=lin.features_train.astype(dtype),
                       y_train=y_train, head_kernel=lin.head_kernel.astype(dtype),
                       head_bias=lin.head_bias.astype(dtype),
                       jw0_features_train=lin.jw0_features_train.astype(dtype),
                       k_phi_test=k_phi_st.astype(dtype),
                       features_test_0=lin.features_test.astype(dtype), y_test=y_test,
                       jw0_features_test=lin.jw0_features_test.astype(dtype))
  if population is not None and method != 'sde':
    raise ValueError(f'population is for the sde method only, got method={method!r}')
  for hp in configs:
    hp.validate(population or n)
  if method == 'sde':
    sde_curves, sde_seconds = _sde_grid(configs, key, num_paths, dt, population, arrays,
                                        loss=loss, eval_every=eval_every)
  results = []
  for i, hp in enumerate(configs):
    lrs = sgd.learning_rates(hp)
    start = time.perf_counter()
    common = dict(loss=loss, eval_every=eval_every, momentum=hp.momentum,
                  weight_decay=hp.weight_decay, **arrays)
    if method in ('exact', 'head_aware'):
      if orders is not None and orders[i] is not None:
        o = np.asarray(orders[i])
      else:
        ks = jax.random.split(jax.random.fold_in(key, i), num_paths)
        o = np.stack([sgd.batch_order(k, n, hp.batch_size, hp.steps) for k in ks])
    if method == 'sde':
      curves = sde_curves[i]
    elif method == 'exact':
      curves, _, _ = dynamics.simulate_sgd(o, lrs, nesterov=hp.nesterov, **common)
    elif method == 'head_aware':
      curves, _, _ = dynamics.simulate_head_aware(
          o, lrs, loss=loss, eval_every=eval_every, momentum=hp.momentum, nesterov=hp.nesterov,
          weight_decay=hp.weight_decay, **head_arrays)
    else:
      curves, _, _ = dynamics.simulate_full_batch(lrs, nesterov=hp.nesterov, **common)
    curves = jax.device_get(curves)
    seconds = sde_seconds[i] if method == 'sde' else time.perf_counter() - start
    steps = np.arange(0, hp.steps + 1, eval_every)
    limit = lr_limit(max_eig, n, loss, hp.momentum)
    out = {'hparams': hp.to_dict(), 'method': method, 'steps': steps, 'lr_limit': limit,
           'seconds': seconds, 'diverged': _diverged(curves)}
    if out['diverged']:
      out.update(curves=None, times=None)
    else:
      out['curves'], out['times'] = _summarise(curves, steps, targets)
    results.append(out)
  return results


def relative_error(predicted: float | None, real: float | None) -> float | None:
  """|T̂ - T| / T; None when either time is missing (target never reached)."""
  if predicted is None or real is None or real == 0:
    return None
  return abs(predicted - real) / real


def curve_log_error(predicted: np.ndarray, real: np.ndarray) -> float:
  """max_t |log L̂_t - log L_t| over the evaluated steps ([E] each)."""
  return float(np.max(np.abs(np.log(np.asarray(predicted)) - np.log(np.asarray(real)))))
