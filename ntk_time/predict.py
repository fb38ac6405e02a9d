"""From one kernel to every configuration of a grid: curves, training times, bands.

`predict(lin, ...)` simulates each SGD configuration on the linearised model
(`dynamics.py`) and summarises the paths: mean and 5/50/95% quantile curves,
and the training time under each definition of DESIGN §3.3 path by path, with
the estimate (times.estimate) and quantiles over paths. Times are in SGD steps;
`to_seconds` converts.
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
from ntk_time import summary as summary_lib
from ntk_time import times as times_lib

# The simulated predictors. 'sde', 'replay', 'head_aware', 'head_scaled', 'head_exact',
# 'catapult' and 'relinearised' are the methods; 'full_batch' (the deterministic B = N limit
# of 'replay') and 'nt_gradient_descent' (neural-tangents' own gradient flow, needs
# neural-tangents) are also the reference baselines. 'catapult' is 'replay' on a kernel whose
# top is clipped where a real net catapults (MSE).
METHODS = ('sde', 'replay', 'head_aware', 'head_scaled', 'head_exact', 'catapult', 'relinearised',
           'full_batch', 'nt_gradient_descent')
# The head trained exactly, the features linearised.
HEAD_METHODS = ('head_aware', 'head_scaled', 'head_exact')
# 'replay' on a kernel taken after k real steps of one configuration (pipeline.relinearised):
# it trains, so it is never the headline and is labelled wherever methods are listed.
NOT_TRAINING_FREE = ('relinearised',)
REPLAY_METHODS = ('replay', 'relinearised')  # dynamics.simulate_sgd on the given orders
# Those that take dynamics.low_rank's basis.
LOW_RANK_METHODS = ('sde', 'replay', 'relinearised', 'full_batch')
CURVES = ('train_loss', 'train_acc', 'test_loss', 'test_acc')
QUANTILES = (0.05, 0.5, 0.95)
# The catapult's kernel: its top clipped to (1 - CATAPULT_MARGIN) × the stable level, at most
# CATAPULT_TRIES times lower each try while the replay still diverges. A mode left at the
# stable level itself never decays (|1 - η λ/N| = 1 at m = 0); 10% below, its error falls by
# 0.8 a step, 10⁻² within 20 steps. In the uv model (dynamics.CATAPULT_EDGE) the top ends at
# 0.95 of the stable level at η a = 2.1 and lower beyond (0.64 at 2.5).
CATAPULT_MARGIN = 0.1
CATAPULT_TRIES = 10
# The steps of the unclipped replay searched for the spike (_catapult): the uv model's spike
# comes at step 4-23 over its whole window (measured, n = 4,000).
SPIKE_STEPS = 50


def to_seconds(steps: float | None, seconds_per_step: float) -> float | None:
  """Predicted seconds = predicted SGD steps × measured seconds per real step."""
  return None if steps is None else float(steps) * seconds_per_step


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


def _summarise(curves: dict, steps: np.ndarray, targets: times_lib.Targets
               ) -> tuple[dict[str, summary_lib.Band], dict[str, summary_lib.Time]]:
  """Mean / quantile curves over the paths ([S, E] each), and each definition's
  time path by path, summarised by the estimator used for the real seeds
  (times.estimate)."""
  bands = {}
  for name in CURVES:
    c = np.asarray(curves[name], np.float64)
    bands[name] = summary_lib.Band(mean=c.mean(0), **{
        f'q{int(q * 100):02d}': np.quantile(c, q, axis=0) for q in QUANTILES})
  per_path = [times_lib.curve_times(steps, lo, ac, targets) for lo, ac in
              zip(np.asarray(curves['train_loss']), np.asarray(curves['train_acc']))]
  return bands, {name: times_lib.estimate([p[name] for p in per_path], int(steps[-1]))
                 for name in targets.definitions}


def _diverged(curves: dict) -> bool:
  loss = np.asarray(curves['train_loss'], np.float64)
  if not np.all(np.isfinite(loss)):
    return True
  return bool(np.any(loss > 10.0 * np.maximum(loss[:, :1], 1.0)))


def _catapult(hp: sgd.SGD, lrs: np.ndarray, max_eig: float, n: int, loss: str, kernels,
              replay) -> tuple[dict | None, dict]:
  """The 'catapult' method's curves of one configuration, and what its model decided.

  Under MSE, where the linear model diverges (at its peak learning rate η) and η is below
  the catapult's edge (dynamics.lr_limit 'catapult'), a real net converges after a loss
  spike that lowers the top of its kernel to where η is stable (Lewkowycz et al. 2020). So:
  - the replay on Θ itself where it does not diverge (at η below the linear limit it always
    does this, and is then exactly 'replay');
  - else, below the edge, the replay on Θ with its eigenvalues above a cap lowered to it
    (dynamics.clip_kernel): first (1 - CATAPULT_MARGIN) × the stable level λ_s (the
    eigenvalue at which η is the linear limit; λ_max itself where the linear limit is met
    but the minibatches' own curvature makes the replay diverge), then CATAPULT_TRIES - 1
    times lower by the same factor while it still diverges; diverging at every cap, or at
    or above the edge: diverges (curves None). A clipped replay counts as converging where
    it does not diverge and every path ends below its initial loss.
  The catapult itself is not simulated: the clipped replay starts from F_0. Its spike is
  predicted from the replay on Θ itself (mean over paths, every step, the first
  SPIKE_STEPS): the kernel is taken to fall as soon as the unstable modes make the loss
  rise, so the spike is that replay's first rise, the first step t >= 1 with
  L_t > L_{t-1} (spike_step, spike_loss L_t; None where it does not rise). In the uv
  model the loss grows on until the kernel has moved by O(1), after a number of steps
  that grows with the width; the kernel at w0 holds no width, and on the test case
  (fashion_mse, lr 0.01, m = 0, README) the real loss rose for one step only.
  Cross-entropy: the replay on Θ, always. Its curvature falls with the loss, so the linear
  model already spikes and converges above its limit without a change of kernel (README),
  and its real kernels grow, not shrink (DESIGN §3.5).

  Args:
    hp, lrs: the configuration and its [T] learning rates; max_eig: λ_max(Θ); n: N.
    kernels: (k_train_train, k_test_train) as the replay takes them.
    replay: (kernels or None (Θ itself), steps or None) -> the replay's curves ([S, E]
      each); with steps, of the first `steps` steps, every step.

  Returns:
    (curves or None, info): info has linear_limit and edge (learning rates), stable_eig λ_s
    and cap (kernel units, cap None where Θ was not clipped), clipped (how many
    eigenvalues were lowered), spike_step and spike_loss (None without a clip).
  """
  kw = dict(momentum=hp.momentum, nesterov=hp.nesterov, weight_decay=hp.weight_decay)
  peak = float(np.max(lrs))
  linear = dynamics.lr_limit('replay', max_eig, n, loss, **kw)
  info = dict(linear_limit=linear, edge=dynamics.lr_limit('catapult', max_eig, n, loss, **kw),
              stable_eig=None, cap=None, clipped=0, spike_step=None, spike_loss=None)
  if losses.check(loss) != 'mse':
    return replay(None, None), info
  if peak >= info['edge']:
    return None, info
  if peak <= linear:
    curves = replay(None, None)
    if not _diverged(curves):
      return curves, info
  h = dynamics.curvature_bound(loss)
  a_max = h * max_eig / n + hp.weight_decay
  info['stable_eig'] = stable = (a_max * linear / peak - hp.weight_decay) * n / h
  if stable <= 0.0:  # weight decay alone is past the limit: no kernel can make it stable
    return None, info
  cap = min(stable, max_eig)
  for _ in range(CATAPULT_TRIES):
    cap *= 1.0 - CATAPULT_MARGIN
    k_tt, k_st, clipped = dynamics.clip_kernel(*kernels, cap)
    curves = replay((k_tt, k_st), None)
    loss_t = np.asarray(curves['train_loss'], np.float64)
    # Accepted only if every path ends below its start: a clipped kernel on which the
    # minibatches still grow the loss slowly (below _diverged's 10×) is not stable either.
    if not _diverged(curves) and np.all(loss_t[:, -1] <= loss_t[:, 0]):
      info.update(cap=cap, clipped=clipped)
      start = np.mean(np.asarray(replay(None, min(SPIKE_STEPS, len(lrs)))['train_loss'],
                                 np.float64), 0)
      rise = np.flatnonzero(np.diff(start) > 0)
      if rise.size:
        info.update(spike_step=int(rise[0] + 1), spike_loss=float(start[rise[0] + 1]))
      return curves, info
  return None, info


def _sde_grid(configs, key, num_paths, dt, population, arrays, *, loss, eval_every, sampling):
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
        nesterov=per_path(lambda h: h.nesterov), dt=dt, population=population, loss=loss,
        eval_every=eval_every, sampling=sampling, **arrays)
    share = (time.perf_counter() - start) / len(group)
    for j, i in enumerate(group):
      curves[i] = {name: v[j * num_paths:(j + 1) * num_paths] for name, v in c.items()}
      seconds[i] = share
  return curves, seconds


def _nt_curves(lin, y_train, y_test, hp, steps, loss) -> dict:
  """nt_gradient_descent's outputs as one path of curves ([1, E] each)."""
  fx, fxt = ntk.nt_gradient_descent(lin.k_train_train, lin.fx_train_0, y_train, steps, lr=hp.lr,
                                    momentum=hp.momentum, loss=loss,
                                    k_test_train=lin.k_test_train, fx_test_0=lin.fx_test_0)
  def metrics(f, y):  # [E, M, C], [M] -> mean loss and accuracy per time, [E] each
    if not len(y):
      return np.full(len(f), np.nan), np.full(len(f), np.nan)
    return (np.asarray(jnp.mean(losses.loss(loss, jnp.asarray(f), jnp.asarray(y)), -1)),
            np.mean(np.argmax(f, -1) == np.asarray(y), -1))
  (tl, ta), (vl, va) = metrics(fx, y_train), metrics(fxt, y_test)
  return {k: v[None] for k, v in
          dict(train_loss=tl, train_acc=ta, test_loss=vl, test_acc=va).items()}


def predict(lin: ntk.Linearization, y_train: np.ndarray, y_test: np.ndarray,
            configs: list[sgd.SGD], *, key: jax.Array | None = None, method: str = 'sde',
            loss: str, eval_every: int, targets: times_lib.Targets, num_paths: int = 32,
            dt: int = 1, orders: list[np.ndarray] | None = None, dtype=np.float32,
            population: int | None = None, sampling: str = 'epoch', rank: int = 0,
            rank_tol: float = 0.0, feature_scale_power: float = 1.0
            ) -> list[summary_lib.Prediction]:
  """Predicts every configuration of a grid from one linearisation.

  Args:
    lin: kernel and initial outputs (ntk.linearize).
    y_train: [N] and y_test: [N_test] int labels.
    configs: the grid; each config's steps is its horizon.
    key: PRNG key, folded with the config's index (needed for 'sde', and for
      'replay', 'relinearised' and the head methods unless every order is given).
    method: 'sde' (the paper's SDE, num_paths paths), 'replay' (the exact
      minibatch simulator on `orders[i]` [S, T, B], or num_paths orders drawn
      from key), 'relinearised' ('replay' itself: the pipeline passes it a
      linearisation whose kernel is taken after a short real probe,
      pipeline.relinearised), 'head_aware' (dynamics.simulate_head_aware on orders like
      'replay'; needs a linearisation made with features_fn), 'head_exact'
      (dynamics.simulate_head_exact likewise, with the whole feature kernel; needs
      ntk.with_feature_factors), 'head_scaled' ('head_aware' with the feature
      kernel rescaled by the simulated features' growth, s_i^γ s_j^γ K_φ[i, j], γ =
      feature_scale_power: dynamics.simulate_head_aware), 'full_batch' (the
      deterministic B = N limit of 'replay'), 'nt_gradient_descent'
      (neural-tangents' gradient flow with momentum: no noise, no weight decay).
    loss, eval_every, targets: see dynamics / times.Targets.
    dt: SGD steps per Euler–Maruyama step (sde only; the configurations of one
      horizon are simulated together, see dynamics.simulate_sde).
    dtype: of the simulation (np.float64 needs 64-bit JAX: compat.enable_x64).
    population: sde only: the size N of the training set that the kernel's
      samples are a random subset of (subset.py's replica prediction); the
      batch size is checked against it.
    sampling: how the minibatches are drawn (sgd.batch_order): 'epoch' or 'iid'.
      The SDE's noise models it (dynamics.simulate_sde); orders drawn here for
      'replay' and the head methods use it.
    rank: > 0: the methods of LOW_RANK_METHODS simulate with the leading `rank`
      eigenpairs of the kernel, Θ ≈ U Λ Uᵀ (dynamics.low_rank: O(N·C·k) a step
      instead of (N·C)²; of K for a class-traced kernel); 0: the dense kernel.
    rank_tol: > 0 (with rank 0): the smallest rank whose bound on the
      training-loss error over the grid's longest horizon (dynamics.low_rank_within,
      in loss units) is at most rank_tol.
    feature_scale_power: 'head_scaled' only: γ in [0, 1] (see
      dynamics.simulate_head_aware).

  Returns:
    One summary.Prediction per configuration: mean and quantile curves over
    paths, and every definition's time per path with its estimate (their mean,
    times.estimate — the statistic applied to the real seeds); a
    diverging configuration has curves and times None and says so.
  """
  if method not in METHODS:
    raise ValueError(f'unknown prediction method {method!r}; expected one of {METHODS}')
  if not (isinstance(num_paths, (int, np.integer)) and num_paths >= 1):
    raise ValueError(f'num_paths must be a positive integer, got {num_paths!r}')
  losses.check(loss)
  if (rank or rank_tol) and method not in LOW_RANK_METHODS:
    raise ValueError(f'rank={rank}, rank_tol={rank_tol} is for the methods {LOW_RANK_METHODS}, '
                     f'not {method!r}')
  if rank and rank_tol:
    raise ValueError(f'rank={rank} and rank_tol={rank_tol}: give one (rank_tol chooses the rank)')
  if np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError('dtype=float64 needs 64-bit JAX: run inside ntk_time.compat.enable_x64() '
                     'or set jax_enable_x64')
  n = len(y_train)
  if rank or rank_tol:
    # A class-traced K keeps its own basis [N, k], which every simulator takes.
    if rank:
      basis = dynamics.low_rank(lin.k_train_train, rank)
    else:
      lr_sum = max(float(np.sum(sgd.learning_rates(hp))) / (1.0 - hp.momentum) for hp in configs)
      basis = dynamics.low_rank_within(lin.k_train_train, rank_tol, fx_train_0=lin.fx_train_0,
                                       y_train=y_train, loss=loss, lr_sum=lr_sum)
    rank = len(basis.eigvals)
    max_eig = float(basis.eigvals[0])
    k_tt, k_st = dynamics.LowRank(*(a.astype(dtype) for a in basis)), lin.k_test_train
  else:
    # The SDE and neural-tangents take a class-traced kernel as K; the minibatch
    # simulators need K ⊗ I_C.
    k_tt, k_st = (lin.full_kernels() if method in REPLAY_METHODS + ('catapult', 'full_batch')
                  else (lin.k_train_train, lin.k_test_train))
    exact_kernels = (k_tt, k_st)
    max_eig = largest_eigenvalue(k_tt)
    k_tt = k_tt.astype(dtype)
  arrays = dict(k_train_train=k_tt, fx_train_0=lin.fx_train_0.astype(dtype),
                y_train=y_train, jw0_train=lin.jw0_train.astype(dtype),
                k_test_train=k_st.astype(dtype), fx_test_0=lin.fx_test_0.astype(dtype),
                y_test=y_test, jw0_test=lin.jw0_test.astype(dtype))
  if method in HEAD_METHODS:
    if not lin.head_aware:
      raise ValueError(f'method {method!r} needs ntk.linearize(..., features_fn=...)')
    if method == 'head_exact' and lin.feature_factors_train is None:
      raise ValueError("method 'head_exact' needs the feature kernel's factors: "
                       'ntk.with_feature_factors(lin, ...)')
    if method != 'head_exact':
      k_phi, k_phi_st = lin.feature_kernels()
      kernels = dict(k_phi=k_phi.astype(dtype), k_phi_test=k_phi_st.astype(dtype))
      if method == 'head_scaled':
        kernels['feature_scale_power'] = feature_scale_power
    else:
      kernels = dict(feature_factors=lin.feature_factors_train.astype(dtype),
                     feature_factors_test=lin.feature_factors_test.astype(dtype))
    head_arrays = dict(features_train_0=lin.features_train.astype(dtype),
                       y_train=y_train, head_kernel=lin.head_kernel.astype(dtype),
                       head_bias=lin.head_bias.astype(dtype),
                       jw0_features_train=lin.jw0_features_train.astype(dtype),
                       features_test_0=lin.features_test.astype(dtype), y_test=y_test,
                       jw0_features_test=lin.jw0_features_test.astype(dtype), **kernels)
  if method == 'nt_gradient_descent' and not ntk.nt_available():
    raise ValueError("method 'nt_gradient_descent' needs neural-tangents, which does not "
                     'import here (it needs jax <= 0.5.x)')
  if population is not None and method != 'sde':
    raise ValueError(f'population is for the sde method only, got method={method!r}')
  for hp in configs:
    hp.validate(population or n)
  if method == 'sde':
    sde_curves, sde_seconds = _sde_grid(configs, key, num_paths, dt, population, arrays,
                                        loss=loss, eval_every=eval_every, sampling=sampling)
  results, deterministic = [], {}
  for i, hp in enumerate(configs):
    lrs = sgd.learning_rates(hp)
    no_batches = dataclasses.replace(hp, batch_size=1)
    steps = np.arange(0, hp.steps + 1, eval_every)
    start = time.perf_counter()
    catapult = None
    common = dict(loss=loss, eval_every=eval_every, momentum=hp.momentum,
                  weight_decay=hp.weight_decay, **arrays)
    if method in REPLAY_METHODS + ('catapult',) + HEAD_METHODS:
      if orders is not None and orders[i] is not None:
        o = np.asarray(orders[i])
      else:
        ks = jax.random.split(jax.random.fold_in(key, i), num_paths)
        o = np.stack([sgd.batch_order(k, n, hp.batch_size, hp.steps, sampling) for k in ks])
    if method == 'sde':
      curves = sde_curves[i]
    elif method in REPLAY_METHODS:
      curves, _, _ = dynamics.simulate_sgd(o, lrs, nesterov=hp.nesterov, **common)
    elif method == 'catapult':
      def replay(kernels, first, o=o, lrs=lrs, hp=hp, common=common):
        if kernels is not None:
          common = {**common, 'k_train_train': kernels[0].astype(dtype),
                    'k_test_train': kernels[1].astype(dtype)}
        if first is not None:
          o, lrs, common = o[:, :first], lrs[:first], {**common, 'eval_every': 1}
        return jax.device_get(dynamics.simulate_sgd(o, lrs, nesterov=hp.nesterov, **common)[0])
      curves, catapult = _catapult(hp, lrs, max_eig, n, loss, exact_kernels, replay)
    elif method in HEAD_METHODS:
      simulate = (dynamics.simulate_head_exact if method == 'head_exact'
                  else dynamics.simulate_head_aware)
      curves, _, _ = simulate(
          o, lrs, loss=loss, eval_every=eval_every, momentum=hp.momentum, nesterov=hp.nesterov,
          weight_decay=hp.weight_decay, **head_arrays)
    elif no_batches in deterministic:  # the same configuration but for B: the same curves
      curves = deterministic[no_batches]
    elif method == 'full_batch':
      curves, _, _ = dynamics.simulate_full_batch(lrs, nesterov=hp.nesterov, **common)
    else:
      curves = _nt_curves(lin, y_train, y_test, hp, steps, loss)
    if method in ('full_batch', 'nt_gradient_descent'):
      deterministic[no_batches] = curves
    curves = None if curves is None else jax.device_get(curves)
    seconds = sde_seconds[i] if method == 'sde' else time.perf_counter() - start
    # relinearised is replay on another kernel: replay's limit, on that kernel's λ_max.
    limit = dynamics.lr_limit('replay' if method in REPLAY_METHODS else method, max_eig, n,
                              loss, momentum=hp.momentum, nesterov=hp.nesterov,
                              weight_decay=hp.weight_decay, dt=dt)
    results.append(from_curves(method, hp, steps, curves, seconds=seconds, targets=targets,
                               lr_limit=limit, rank=rank, catapult=catapult))
  return results


def from_curves(method: str, hp: sgd.SGD, steps: np.ndarray, curves: dict, *, seconds: float,
                targets: times_lib.Targets, lr_limit: float = float('inf'),
                rank: int = 0, catapult: dict | None = None) -> summary_lib.Prediction:
  """The Prediction of one configuration from its simulated paths.

  Args:
    method: the predictor's name; hp: the configuration; steps: [E] evaluated steps.
    curves: per name of CURVES, [S, E] over S paths (NaN where a simulator has no
      such curve: its times on it are None).
    seconds: what the simulation cost; lr_limit, rank, catapult: as summary.Prediction.
    curves None: the simulation diverged before it finished (catapult's verdict).
  """
  pred = summary_lib.Prediction(method=method, hparams=hp.to_dict(), steps=steps,
                                lr_limit=lr_limit, seconds=seconds,
                                diverged=curves is None or _diverged(curves), rank=rank,
                                catapult=catapult)
  if not pred.diverged:
    pred.curves, pred.times = _summarise(curves, steps, targets)
  return pred
