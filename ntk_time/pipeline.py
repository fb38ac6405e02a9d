"""Predicted vs real fine-tuning over a grid: the whole comparison, with its caches.

  summary = pipeline.run(config, workdir)      # kernel, predictions, real runs, errors
  pr = pipeline.predicted(config, workdir)     # everything before the real runs

`run` computes the kernel once, predicts every configuration with each of
`config.predict.methods` (the first is the headline) and with the simulated
baselines ('full_batch', and 'nt_gradient_descent' where neural-tangents
imports), fine-tunes every configuration for real with the same batch orders,
and measures every predictor — the trivial ones too: the best constant in
hindsight and a constant fraction of the horizon — on every definition of
times.py. It writes summary.json (summary.Summary), summary.csv and the
figures to the workdir.

A workdir belongs to one config, up to its `predict` block: rerunning in it skips
every finished stage (pretraining, kernel, predictions, real runs) and resumes an
interrupted real run from its last saved state, with the same numbers as an
uninterrupted run; a changed `predict` block (another method, say) recomputes
only the predictions.
"""

import copy
import dataclasses
import os
import shutil
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from ntk_time import checks
from ntk_time import compat
from ntk_time import data
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import plots
from ntk_time import predict
from ntk_time import sgd
from ntk_time import subset
from ntk_time import summary as summary_lib
from ntk_time import times as times_lib
from ntk_time import workdir as wd

# Baselines beside every method: simulated ones (full_batch: the deterministic ODE
# limit; nt_gradient_descent: the anchor library's gradient flow), then the trivial ones.
SIMULATED_BASELINES = ('full_batch', 'nt_gradient_descent')
TRIVIAL_BASELINES = ('best_constant', 'horizon_fraction')


def config_name(hp: sgd.SGD) -> str:
  return f'lr{hp.lr:g}_B{hp.batch_size}_m{hp.momentum:g}_wd{hp.weight_decay:g}'


def nt_supports(configs: list[sgd.SGD]) -> bool:
  """Whether neural-tangents' gradient flow can stand for this grid: it imports
  here, and every configuration has a constant learning rate, heavy-ball momentum
  and no weight decay (its ODE has none of the others)."""
  return ntk.nt_available() and all(
      hp.schedule == 'constant' and not hp.nesterov and not hp.weight_decay for hp in configs)


def baselines(methods, configs: list[sgd.SGD]) -> list[str]:
  """The baselines of a run comparing `methods` on `configs`: the simulated ones
  not among the methods (nt_gradient_descent where `nt_supports` the grid), then
  the trivial ones."""
  sim = [b for b in SIMULATED_BASELINES if b not in methods
         and (b != 'nt_gradient_descent' or nt_supports(configs))]
  return sim + list(TRIVIAL_BASELINES)


def _predictions(lin, task, configs, orders, config, key_sde, targets, path, pred_hash, reuse,
                 simulated, relin=None):
  """Every simulated predictor's predictions, reused from `path` if made for
  `pred_hash` (and `reuse`); returned as read back from JSON, so that a first
  run and a rerun compute the summary from the same numbers. 'relinearised'
  simulates on `relin` (`relinearised`), every other predictor on `lin`."""
  if not (reuse and os.path.exists(path) and wd.read_json(path).get('config_hash') == pred_hash):
    ft, pc = config.finetune, config.predict
    dtype = np.float64 if pc.dtype == 'float64' else np.float32
    common = dict(loss=ft.loss, eval_every=ft.eval_every, targets=targets, dtype=dtype)
    low_rank = dict(rank=pc.rank, rank_tol=pc.rank_tol)
    per_method = {'sde': dict(key=key_sde, num_paths=pc.num_paths, dt=pc.dt, sampling=ft.sampling,
                              **low_rank),
                  'replay': dict(orders=orders, **low_rank),
                  'relinearised': dict(orders=orders, **low_rank), 'full_batch': low_rank,
                  'catapult': dict(orders=orders), 'head_aware': dict(orders=orders),
                  'head_exact': dict(orders=orders),
                  'head_scaled': dict(orders=orders, feature_scale_power=pc.feature_scale_power)}
    with compat.enable_x64(pc.dtype == 'float64'):
      preds = {m: [p.to_json() for p in predict.predict(
          relin if m == 'relinearised' else lin, task.y_train, task.y_test, configs, method=m,
          **per_method.get(m, {}), **common)] for m in simulated}
    wd.write_json(path, {'config_hash': pred_hash, **preds})
  preds = wd.read_json(path)
  del preds['config_hash']
  return {m: [summary_lib.Prediction.from_json(p) for p in ps] for m, ps in preds.items()}


def cached_kernel(path: str, kernel_hash: str, apply_fn, params, x_train, x_test, kernel_cfg,
                  features_fn=None, progress: bool = True, reuse: bool = True
                  ) -> ntk.Linearization:
  """ntk.linearize with the settings of a `kernel` config block, reused from `path`
  (an npz) when it was written for `kernel_hash` (and `reuse`)."""
  cached = wd.load_if_hash(path, kernel_hash) if reuse else None
  if cached is not None:
    return ntk.Linearization(**{k: v for k, v in cached.items() if k != 'config_hash'})
  k = kernel_cfg
  lin = ntk.linearize(apply_fn, params, x_train, x_test, implementation=k.implementation,
                      traced=k.traced, block_size=k.block_size, memory_gb=k.memory_gb,
                      features_fn=features_fn, sketch_dim=k.sketch_dim,
                      sketch_key=jax.random.key(k.sketch_seed), sketch_kind=k.sketch_kind,
                      progress=progress)
  wd.write_npz(path, config_hash=kernel_hash, **lin.arrays())
  return lin


def relinearised(apply_fn, params, lin: ntk.Linearization, task, hp: sgd.SGD, order: np.ndarray,
                 steps: int, config, workdir: str, relin_hash: str, progress: bool = True,
                 reuse: bool = True) -> tuple[ntk.Linearization, dict]:
  """The linearisation of 'relinearised': the kernel at w_k, the weights after the
  first `steps` (k) real steps of `hp` on `order` ([>= k, B]), with the start of
  `lin` (ntk.linearize at w0): Θ(w_k), f(w0) and J_k w0 (J_k = ∂F/∂w at w_k).

  The probe is finetune.finetune itself (the real runs' step and optimiser, so
  with the batches of a real run, its first k steps); its weights are written to
  <workdir>/relinearised_probe.npz and the kernel, by `cached_kernel` with the
  `kernel` config block, to relinearised_kernel.npz, both reused when made for
  `relin_hash` (and `reuse`). The model simulated is F = f(w0) + J_k (w − w0)
  with w from w0: weight decay's λ w moves it by λ (F − f(w0) + J_k w0), so
  jw0 is J_k w0, one forward-mode pass at w_k.

  Returns:
    (Linearization whose seconds are the kernel's and J_k w0's, report
    {'probe_seconds': the probe's training steps (as the real runs' train_seconds),
    'kernel_seconds': the same as the Linearization's, 'probe_train_loss': the
    real training loss at step k}).
  """
  probe_path = os.path.join(workdir, 'relinearised_probe.npz')
  treedef = jax.tree.structure(params)
  probe = wd.load_if_hash(probe_path, relin_hash) if reuse else None
  if probe is None:
    result = finetune.finetune(apply_fn, params, task, dataclasses.replace(hp, steps=steps),
                               order[:steps], loss=config.finetune.loss, eval_every=steps,
                               progress=progress)
    if result['diverged_at'] is not None:
      raise ValueError(f'the probe of relinearised ({steps} real steps of {hp}) diverged at step '
                       f"{result['diverged_at']}: probe another configuration "
                       '(predict.relin_config) or fewer steps (predict.relin_fraction)')
    leaves = jax.tree.leaves(jax.device_get(result['params']))
    probe = {'probe_seconds': result['train_seconds'],
             'probe_train_loss': result['curves'].train_loss[-1],
             **{f'w_{j}': v for j, v in enumerate(leaves)}}
    wd.write_npz(probe_path, config_hash=relin_hash, **probe)
  w_k = jax.tree.unflatten(treedef, [probe[f'w_{j}'] for j in range(treedef.num_leaves)])
  lin_k = cached_kernel(os.path.join(workdir, 'relinearised_kernel.npz'), relin_hash, apply_fn,
                        w_k, task.x_train, task.x_test, config.kernel, progress=progress,
                        reuse=reuse)
  t0 = time.perf_counter()
  jw0_train, jw0_test = (ntk.jvp(apply_fn, w_k, params, x) for x in (task.x_train, task.x_test))
  seconds = lin_k.seconds + time.perf_counter() - t0
  relin = ntk.Linearization(
      k_train_train=lin_k.k_train_train, k_test_train=lin_k.k_test_train,
      fx_train_0=lin.fx_train_0, fx_test_0=lin.fx_test_0, jw0_train=jw0_train,
      jw0_test=jw0_test, seconds=seconds)
  return relin, {'probe_seconds': float(probe['probe_seconds']), 'kernel_seconds': seconds,
                 'probe_train_loss': float(probe['probe_train_loss'])}


FEATURE_FIELDS = ('feature_factors_train', 'feature_factors_test', 'feature_rank_errors')


def cached_feature_factors(path: str, factors_hash: str, lin: ntk.Linearization, features_fn,
                           params, x_train, x_test, pc, block_size: int, progress: bool = True,
                           reuse: bool = True) -> ntk.Linearization:
  """ntk.with_feature_factors with the settings of a `predict` config block, reused from
  `path` (an npz) when it was written for `factors_hash` (and `reuse`)."""
  cached = wd.load_if_hash(path, factors_hash) if reuse else None
  if cached is not None:
    return dataclasses.replace(lin, **{k: cached[k] for k in FEATURE_FIELDS})
  lin = ntk.with_feature_factors(lin, features_fn, params, x_train, x_test,
                                 rank=pc.feature_rank, tol=pc.feature_rank_tol,
                                 key=jax.random.key(pc.feature_seed), block_size=block_size,
                                 progress=progress)
  wd.write_npz(path, config_hash=factors_hash, **{k: getattr(lin, k) for k in FEATURE_FIELDS})
  return lin


def real_run(apply_fn, params, task, hp, order, config, run_dir, run_hash, progress,
             features_fn=None, reference=None, drift_x=None, eval_idx=None):
  """One real fine-tuning run (reused if finished, resumed if interrupted),
  evaluated on the training samples `eval_idx` (None: all; finetune.eval_subset). With
  `reference` (ntk.kernel_parts at w0 on `drift_x`), also its kernel drift and
  its diagnosis (ntk.kernel_diagnosis; neither after a divergence). Returns
  (run.json's dict, curves)."""
  done = os.path.join(run_dir, 'run.json')
  if os.path.exists(done) and wd.read_json(done).get('config_hash') == run_hash:
    return wd.read_json(done), wd.read_npz(os.path.join(run_dir, 'curves.npz'))
  ft = config.finetune
  result = finetune.finetune(apply_fn, params, task, hp, order, loss=ft.loss,
                             eval_every=ft.eval_every, workdir=run_dir,
                             checkpoint_every=ft.checkpoint_every, progress=progress,
                             eval_idx=eval_idx)
  run = wd.read_json(done)
  if reference is not None and result['diverged_at'] is None:
    # Θ on a fixed subset at the real final weights vs at w0, by part (DESIGN §3.5).
    after = ntk.kernel_parts(apply_fn, features_fn, result['params'], drift_x,
                             block_size=config.kernel.block_size)
    run['kernel_drift'] = ntk.relative_drift(reference['head'] + reference['backbone'],
                                             after['head'] + after['backbone'])
    run['diagnosis'] = ntk.kernel_diagnosis(reference, after)
  run['config_hash'] = run_hash
  wd.write_json(done, run)
  return run, wd.read_npz(os.path.join(run_dir, 'curves.npz'))


def real_results(curves_per_seed: list[dict], runs: list[dict],
                 targets: times_lib.Targets) -> summary_lib.Real:
  """The real runs of one configuration: per seed curves ([E] each), and every
  definition's time seed by seed with the estimator of the predictions."""
  per_seed = [times_lib.curve_times(c['steps'], c['train_loss'], c['train_acc'], targets)
              for c in curves_per_seed]
  horizon = int(curves_per_seed[0]['steps'][-1])
  times = {d: times_lib.estimate([t[d] for t in per_seed], horizon) for d in targets.definitions}
  return summary_lib.Real(
      curves={k: [np.asarray(c[k]) for c in curves_per_seed] for k in predict.CURVES},
      times=times, spread={d: times_lib.spread(t) for d, t in times.items()},
      train_seconds=[r['train_seconds'] for r in runs],
      seconds_per_step=float(np.mean([r['seconds_per_step'] for r in runs])),
      diverged_at=[r.get('diverged_at') for r in runs], kernel_drift=runs[0].get('kernel_drift'),
      diagnosis=summary_lib.KernelDiagnosis.from_json(runs[0].get('diagnosis')))


@dataclasses.dataclass
class Predicted:
  """Everything of a comparison that comes before the real runs (see `predicted`).

  base: what identifies the starting point (checkpoint, model, task, seed, head
  initialisation), for hashes; head_report: finetune.init_head's report;
  orders: per configuration [seeds, T, B] batch orders; step_seconds,
  flop_seconds and flops: per configuration, seconds of one real step measured
  and from XLA's FLOP count, and that count; preds: per simulated predictor
  (methods and simulated baselines), one Prediction per configuration;
  method_costs: the seconds of what a method pays beyond the kernel at w0 and
  its simulations ('relinearised_probe_seconds', 'relinearised_kernel_seconds').
  kernel_report: ntk.check_kernel's at w0, with 'relinearised_config' (the index
  of the configuration probed), '_steps' (k), '_probe_train_loss' (the real
  training loss at step k) and '_max_eig' (of Θ(w_k)) when 'relinearised' is
  among the methods.
  """
  configs: list[sgd.SGD]
  targets: times_lib.Targets
  task: data.Task
  params: Any
  apply_fn: Callable
  features_fn: Callable
  pre_report: dict
  head_report: dict
  base: dict
  lin: ntk.Linearization
  kernel_report: dict
  orders: list[np.ndarray]
  step_seconds: list[float]
  flop_seconds: list[float]
  flops: list[float]
  step_timing_seconds: float
  methods: list[str]
  baselines: list[str]
  preds: dict[str, list[summary_lib.Prediction]]
  method_costs: dict[str, float]


def _step_timings(apply_fn, params, task, configs, loss, key):
  """Seconds and FLOPs of one real step per configuration, from one timing and one
  FLOP count per batch size (its first configuration's optimiser), and FLOP-based
  seconds calibrated by the timing of the first batch size.

  The optimiser is not worth a timing of its own: momentum or weight decay add
  0.03% to the FLOPs of a step (526.71 vs 526.86 MFLOP for the demo's ResNet-8 at
  B = 10), while each timing costs a compilation, and the real runs of one
  structure differ by 20-30% between themselves on a loaded machine.
  """
  first = {}
  for hp in configs:
    first.setdefault(hp.batch_size, hp)
  cost = {b: finetune.step_cost(apply_fn, params, task, hp, loss=loss,
                                key=jax.random.fold_in(key, b))
          for b, hp in first.items()}
  measured = {b: c[0] for b, c in cost.items()}
  flops = {b: c[1] for b, c in cost.items()}
  ref = next(iter(first))
  per_flop = measured[ref] / flops[ref]
  return ([measured[hp.batch_size] for hp in configs],
          [flops[hp.batch_size] * per_flop for hp in configs],
          [flops[hp.batch_size] for hp in configs])


def head_key(ft) -> dict:
  """What the start point's head depends on beyond the seed, for every cache key
  downstream of it (kernel, predictions, real runs)."""
  return {'head_init': ft.head_init,
          'probe_l2': ft.probe_l2 if ft.head_init == 'linear_probe' else None}


def predicted(config, workdir: str, progress: bool = True, overwrite: bool = False,
              reuse: bool = True, with_baselines: bool = True) -> Predicted:
  """Checks the config, claims the workdir, pretrains (or loads), computes the kernel,
  times the real step and predicts every configuration with every simulated predictor.

  reuse=False recomputes the kernel and the predictions even when the workdir has
  them for this config (runs over several processes do: they must all compute).
  with_baselines=False simulates the methods only (a ranking needs no baselines).
  """
  configs = checks.check(config)  # before any work is done
  ft, pc = config.finetune, config.predict
  targets = checks.targets_from_config(pc)
  # The predictions' cache has its own hash, with the predict block: changing a method
  # or its settings reuses everything else.
  wd.claim(workdir, config.to_dict(), overwrite, free=('predict',))
  keys = sgd.run_keys(config.seed)

  # Pretrained model with its new head (finetune.head_init) on the target task.
  task, model, variables, pre_report, ckpt_path, head_report = finetune.target_from_config(
      config, workdir, keys['head'], progress)
  params = variables['params']
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  features_fn = models.make_features_fn(model, variables['batch_stats'])

  # The kernel, once.
  base = {'checkpoint': wd.config_hash(pre_report), 'ckpt_path': os.path.abspath(ckpt_path),
          'model': config.model.to_dict(), 'target': config.target.to_dict(), 'seed': config.seed,
          **head_key(ft)}
  kernel_hash = wd.config_hash({**base, 'kernel': config.kernel.to_dict(), 'features': True})
  lin = cached_kernel(os.path.join(workdir, 'kernel.npz'), kernel_hash, apply_fn, params,
                      task.x_train, task.x_test, config.kernel, features_fn, progress, reuse)
  kernel_report = ntk.check_kernel(lin.k_train_train)
  if 'head_exact' in pc.methods:
    factors_hash = wd.config_hash({'kernel': kernel_hash, **{
        f: pc[f] for f in ('feature_rank', 'feature_rank_tol', 'feature_seed')}})
    lin = cached_feature_factors(os.path.join(workdir, 'feature_factors.npz'), factors_hash,
                                 lin, features_fn, params, task.x_train, task.x_test, pc,
                                 config.kernel.block_size, progress, reuse)
    rank = lin.feature_factors_train.shape[-1]
    kernel_report.update(feature_rank=rank,
                         feature_rank_error=float(lin.feature_rank_errors[rank - 1]))

  # Same batch orders for the real runs and the replaying simulators.
  orders = [np.stack([sgd.batch_order(jax.random.fold_in(keys['order'], s), len(task.x_train),
                                      hp.batch_size, hp.steps, ft.sampling)
                       for s in range(ft.seeds)]) for hp in configs]

  t0 = time.perf_counter()
  step_seconds, flop_seconds, flops = _step_timings(apply_fn, params, task, configs, ft.loss,
                                                    keys['time'])
  step_timing_seconds = time.perf_counter() - t0
  methods = list(pc.methods)
  relin, relin_report, method_costs = None, None, {}
  if 'relinearised' in methods:
    index, steps = checks.relin_probe(pc, configs)
    order = orders[index][0]  # the seed-0 real run's batches
    relin_hash = wd.config_hash({'kernel': kernel_hash, 'relin_fraction': pc.relin_fraction,
                                 'relin_config': index, 'hp': configs[index].to_dict(),
                                 'loss': ft.loss, 'steps': steps,
                                 'order': wd.digest(order[:steps])})
    relin, relin_report = relinearised(apply_fn, params, lin, task, configs[index],
                                       order, steps, config, workdir, relin_hash, progress, reuse)
    relin_report.update(config=index, steps=steps)
    # Beside the kernel at w0's: what was probed, and Θ(w_k)'s check (its λ_max, for scale).
    kernel_report.update({f'relinearised_{name}': v for name, v in relin_report.items()
                          if name not in ('probe_seconds', 'kernel_seconds')},
                         relinearised_max_eig=ntk.check_kernel(relin.k_train_train)['max_eig'])
    method_costs = {'relinearised_probe_seconds': relin_report['probe_seconds'],
                    'relinearised_kernel_seconds': relin_report['kernel_seconds']}
  base_names = baselines(methods, configs) if with_baselines else []
  simulated = methods + [b for b in base_names if b in SIMULATED_BASELINES]
  pred_hash = wd.config_hash({'kernel': kernel_hash, 'grid': [hp.to_dict() for hp in configs],
                              'predict': pc.to_dict(), 'loss': ft.loss, 'simulated': simulated,
                              'sampling': ft.sampling,
                              'eval_every': ft.eval_every, 'orders': wd.digest(*orders)})
  preds = _predictions(lin, task, configs, orders, config, keys['sde'], targets,
                       os.path.join(workdir, 'predictions.json'), pred_hash, reuse, simulated,
                       relin)
  return Predicted(configs=configs, targets=targets, task=task, params=params,
                   apply_fn=apply_fn, features_fn=features_fn, pre_report=pre_report,
                   head_report=head_report, base=base, lin=lin,
                   kernel_report=kernel_report, orders=orders, step_seconds=step_seconds,
                   flop_seconds=flop_seconds, flops=flops,
                   step_timing_seconds=step_timing_seconds, methods=methods,
                   baselines=base_names, preds=preds, method_costs=method_costs)


def ranking(config, workdir: str, progress: bool = True, overwrite: bool = False) -> dict:
  """Predicts the grid of `config` without the real runs, ranked by the headline
  method's predicted seconds to T_eps; returns the ranking, written to
  <workdir>/ranking.json by process 0 (the others work in a temporary folder)."""
  leader = jax.process_index() == 0
  folder = workdir if leader else tempfile.mkdtemp(prefix='ntk_time-predict-')
  try:
    pr = predicted(config, folder, progress and leader, overwrite,
                   reuse=jax.process_count() == 1, with_baselines=False)
  finally:
    if not leader:
      shutil.rmtree(folder, ignore_errors=True)
  rows = []
  for i, hp in enumerate(pr.configs):
    sps = pr.step_seconds[i]
    row = {'name': config_name(hp), 'hparams': hp.to_dict(), 'seconds_per_step': sps,
           'flops_seconds_per_step': pr.flop_seconds[i], 'predicted': {}}
    for method in pr.methods:
      p = pr.preds[method][i]
      t_eps = None if p.diverged else p.times['t_eps'].value
      row['predicted'][method] = {
          'diverged': p.diverged, 'lr_limit': p.lr_limit,
          'times': None if p.diverged else {d: t.to_json() for d, t in p.times.items()},
          'seconds_to_t_eps': predict.to_seconds(t_eps, sps)}
    rows.append(row)
  first = config.predict.methods[0]
  rank_key = lambda r: (r['predicted'][first]['seconds_to_t_eps'] is None,
                        r['predicted'][first]['seconds_to_t_eps'] or 0.0)
  summary = {'config': config.to_dict(), 'methods': pr.methods,
             'task': {'n_train': len(pr.task.x_train), 'n_test': len(pr.task.x_test),
                      'classes': pr.task.class_names},
             'processes': jax.process_count(), 'devices': jax.device_count(),
             'kernel': pr.kernel_report,
             'costs': {'kernel_seconds': pr.lin.seconds,
                       'step_timing_seconds': pr.step_timing_seconds,
                       'probe_seconds': pr.head_report['seconds'],
                       **{f'{m}_seconds': float(sum(p.seconds for p in pr.preds[m]))
                          for m in pr.methods}, **pr.method_costs},
             'configs': sorted(rows, key=rank_key)}
  summary = wd.as_json(summary)  # as every reader of ranking.json sees it
  if leader:
    wd.write_json(os.path.join(workdir, 'ranking.json'), summary)
  return summary


def _errors(pred: summary_lib.Prediction | None, constant: dict[str, float] | None,
            real: summary_lib.Real, horizon: int, targets) -> dict[str, summary_lib.Error]:
  """One predictor's errors on every definition of one configuration: from its
  prediction, or from a constant guess per definition (the trivial baselines)."""
  out = {}
  for d in targets.definitions:
    if constant is not None:
      value, diverged = constant[d], False
    else:
      diverged = pred.diverged
      value = None if diverged else pred.times[d].value
    out[d] = times_lib.error(value, real.times[d].value, horizon, predicted_diverged=diverged,
                             real_diverged=real.diverged)
  finite = [c for c in real.curves['train_loss'] if np.all(np.isfinite(c))]
  if constant is not None:
    out['curve_log_error'] = summary_lib.Error(None)
  elif pred.diverged or real.diverged or not finite:
    both = pred.diverged and real.diverged
    out['curve_log_error'] = summary_lib.Error(0.0 if both else float('inf'), miss=not both)
  else:
    # The mean of the seeds that did not diverge (a minority, or the real times say so).
    real_loss = np.mean(finite, axis=0)
    out['curve_log_error'] = summary_lib.Error(
        times_lib.curve_log_error(pred.curves['train_loss'].mean, real_loss))
  return out


def _constants(reals: list[summary_lib.Real], configs: list[sgd.SGD], targets,
               fraction: float, eval_every: int) -> dict[str, list[dict[str, float]]]:
  """The trivial baselines' guesses per configuration and definition: the best
  constant in hindsight over the grid (an oracle), and fraction × horizon."""
  horizons = [hp.steps for hp in configs]
  candidates = np.arange(0, max(horizons) + 1, eval_every, dtype=np.float64)
  best = {d: times_lib.best_constant([r.times[d].value for r in reals], horizons,
                                     [r.diverged for r in reals], candidates)
          for d in targets.definitions}
  return {'best_constant': [dict(best) for _ in configs],
          'horizon_fraction': [dict.fromkeys(targets.definitions, fraction * h)
                               for h in horizons]}


def aggregate(rows: list[summary_lib.ConfigResult], predictors: list[str],
              targets: times_lib.Targets) -> dict[str, dict[str, summary_lib.Stat]]:
  """Per predictor: a Stat per definition and for the curve error, and the loss
  levels and accuracy levels pooled ('levels', 'acc_levels')."""
  out = {}
  for p in predictors:
    errs = lambda d, p=p: [r.errors[p][d] for r in rows]
    out[p] = {d: times_lib.stat(errs(d)) for d in (*targets.definitions, 'curve_log_error')}
    out[p]['levels'] = times_lib.stat([e for d in targets.loss_levels for e in errs(d)])
    out[p]['acc_levels'] = times_lib.stat([e for d in targets.acc_levels for e in errs(d)])
  return out


def verdicts(agg, methods, base_names) -> dict[str, summary_lib.Verdict]:
  """A method works where its median T_eps error and its median loss-level error
  are both below every baseline's (a method with no value on a measure beats
  nothing; a baseline with none is beaten on it by any value)."""
  out = {}
  for m in methods:
    beats, loses = [], []
    for b in base_names:
      won = True
      for key in ('t_eps', 'levels'):
        mine, theirs = agg[m][key].median, agg[b][key].median
        if mine is None or (theirs is not None and mine >= theirs):
          won = False
      (beats if won else loses).append(b)
    out[m] = summary_lib.Verdict(works=bool(base_names) and not loses, beats=beats,
                                 loses_to=loses)
  return out


def run(config, workdir: str, progress: bool = True, overwrite: bool = False
        ) -> summary_lib.Summary:
  """Runs the comparison; returns the summary also written to summary.json."""
  t_start = time.perf_counter()
  pr = predicted(config, workdir, progress, overwrite)
  ft, pc = config.finetune, config.predict
  configs, targets, task = pr.configs, pr.targets, pr.task
  n_drift = min(config.kernel.drift_samples, len(task.x_train))
  drift_x = task.x_train[:n_drift]
  # Θ(w0) on the drift subset by part, exact (never sketched or traced) and computed as
  # at w_T, so that the drift holds no difference between two ways of computing Θ.
  reference = (ntk.kernel_parts(pr.apply_fn, pr.features_fn, pr.params, drift_x,
                                block_size=config.kernel.block_size) if n_drift else None)

  # Real fine-tuning, every configuration and seed.
  reals = []
  bar_desc = f'{len(configs)} configs × {ft.seeds} seeds'
  for i, hp in enumerate(configs):
    runs, curves = [], []
    for s in range(ft.seeds):
      name = f'{config_name(hp)}_s{s}'
      if progress:
        print(f'[{bar_desc}] real run {i * ft.seeds + s + 1}: {name}')
      run_hash = wd.config_hash({**pr.base, 'hp': hp.to_dict(), 'seed_run': s, 'loss': ft.loss,
                                 'eval_every': ft.eval_every, 'drift': n_drift,
                                 'order': wd.digest(pr.orders[i][s])})
      r, c = real_run(pr.apply_fn, pr.params, task, hp, pr.orders[i][s], config,
                      os.path.join(workdir, 'runs', name), run_hash, progress, pr.features_fn,
                      reference if s == 0 else None, drift_x)
      runs.append(r)
      curves.append(c)
    reals.append(real_results(curves, runs, targets))

  constants = _constants(reals, configs, targets, pc.horizon_fraction, ft.eval_every)
  headline = pr.methods[0]
  rows = []
  for i, (hp, real) in enumerate(zip(configs, reals)):
    errors = {p: _errors(pr.preds[p][i], None, real, hp.steps, targets) for p in pr.preds}
    errors.update({b: _errors(None, constants[b][i], real, hp.steps, targets)
                   for b in TRIVIAL_BASELINES})
    first = pr.preds[headline][i]
    t_pred = None if first.diverged else first.times['t_eps'].value
    sps, fsps = pr.step_seconds[i], pr.flop_seconds[i]
    pred_s = predict.to_seconds(t_pred, sps)
    real_s = predict.to_seconds(real.times['t_eps'].value, real.seconds_per_step)
    seconds = summary_lib.Seconds(
        measured_step=sps, flops_step=fsps, step_flops=pr.flops[i], real_step=real.seconds_per_step,
        measured_step_error=times_lib.relative_error(sps, real.seconds_per_step),
        flops_step_error=times_lib.relative_error(fsps, real.seconds_per_step),
        predicted_t_eps=pred_s, predicted_t_eps_flops=predict.to_seconds(t_pred, fsps),
        real_t_eps=real_s, t_eps_error=times_lib.relative_error(pred_s, real_s))
    rows.append(summary_lib.ConfigResult(
        name=config_name(hp), hparams=hp.to_dict(), horizon=hp.steps, eval_every=ft.eval_every,
        steps=np.arange(0, hp.steps + 1, ft.eval_every), real=real,
        predicted={p: pr.preds[p][i] for p in pr.preds}, errors=errors, seconds=seconds))

  # The cost of a prediction: the kernel, the headline method's simulations, the step timing;
  # a linear probe is paid once on either side: both start from its head.
  probe_s = pr.head_report['seconds']
  costs = {'kernel_seconds': pr.lin.seconds, 'step_timing_seconds': pr.step_timing_seconds,
           'probe_seconds': probe_s,
           'train_seconds': probe_s + float(sum(np.mean(r.real.train_seconds) for r in rows)),
           **{f'{m}_seconds': float(sum(p.seconds for p in pr.preds[m])) for m in pr.preds},
           **pr.method_costs}
  costs['predict_seconds'] = (costs['kernel_seconds'] + costs[f'{headline}_seconds']
                              + costs['step_timing_seconds'] + probe_s)
  costs['ratio'] = costs['train_seconds'] / costs['predict_seconds']
  predictors = pr.methods + pr.baselines
  agg = aggregate(rows, predictors, targets)
  drifts = [r.real.kernel_drift for r in rows if r.real.kernel_drift is not None]
  summary = summary_lib.Summary(
      config=config.to_dict(), methods=pr.methods, baselines=pr.baselines,
      definitions=list(targets.definitions), pretrain=pr.pre_report,
      task={'n_train': len(task.x_train), 'n_test': len(task.x_test),
            'classes': task.class_names, 'num_params': models.num_params(pr.params)},
      kernel=pr.kernel_report, targets=dataclasses.asdict(targets), costs=costs, aggregate=agg,
      verdicts=verdicts(agg, pr.methods, pr.baselines),
      seed_spread={d: _median([r.real.spread[d] for r in rows]) for d in targets.definitions},
      kernel_drift=times_lib.stat([summary_lib.Error(d) for d in drifts]),
      seconds_errors={k: times_lib.stat([summary_lib.Error(getattr(r.seconds, k)) for r in rows
                                         if getattr(r.seconds, k) is not None])
                      for k in ('measured_step_error', 'flops_step_error', 't_eps_error')},
      configs=rows, wall_seconds=time.perf_counter() - t_start, head=pr.head_report,
      notes=[] if 'nt_gradient_descent' in pr.preds else
      ['nt_gradient_descent baseline left out: neural-tangents does not import here, or the '
       'grid has a schedule, Nesterov or weight decay, which its gradient flow does not model'])
  summary.write(workdir)
  summary = summary_lib.Summary.read(workdir)  # as every reader sees it
  write_csv(summary, os.path.join(workdir, 'summary.csv'))
  plots.all_figures(summary, workdir)
  return summary


def _median(vals):
  vals = [v for v in vals if v is not None]
  return float(np.median(vals)) if vals else None


def run_many(experiments, workdir: str, progress: bool = True) -> dict[str, summary_lib.Summary]:
  """`run` for each named config of `experiments` into <workdir>/<name>; experiments
  with the same source model share the first one's pretraining."""
  summaries, pretrained = {}, {}
  for name, cfg in experiments.items():
    cfg = copy.deepcopy(cfg)
    if not cfg.pretrain.checkpoint:
      source = wd.config_hash({k: cfg[k].to_dict() for k in ('source', 'model', 'pretrain')}
                              | {'seed': cfg.seed})
      if source in pretrained:
        cfg.pretrain.checkpoint = pretrained[source]
      else:
        pretrained[source] = os.path.join(workdir, name, 'pretrain', 'checkpoint.msgpack')
    if progress:
      print(f'== {name} ==')
    summaries[name] = run(cfg, os.path.join(workdir, name), progress=progress)
  return summaries


def subset_grid(config, n: int) -> list[sgd.SGD]:
  """The grid of a subset-study config on N = n samples: finetune's, with each
  horizon `config.epochs` passes over the n samples rounded up to a multiple of
  finetune.eval_every (epochs 0: finetune.steps for every configuration)."""
  ft = config.experiment.finetune
  grid = sgd.grid(ft)
  if config.epochs:
    grid = [dataclasses.replace(hp, steps=ft.eval_every * -(-config.epochs * n // (
        hp.batch_size * ft.eval_every))) for hp in grid]
  for hp in grid:
    hp.validate(n)
  return grid


def _subset_errors(pred, constant, real, hp, targets) -> dict[str, summary_lib.Error]:
  """`_errors` on the subset study's definitions: T_eps and the loss levels (spectral
  has no accuracy curve), and the curve error."""
  errs = _errors(pred, constant, real, hp.steps, targets)
  return {d: errs[d] for d in ('t_eps', *targets.loss_levels, 'curve_log_error')}


def _subset_aggregate(errors: list[dict[str, summary_lib.Error]], targets) -> dict:
  """Stats (as JSON) of T_eps, the pooled loss levels and the curve error over runs."""
  return {'t_eps': times_lib.stat([e['t_eps'] for e in errors]).to_json(),
          'levels': times_lib.stat([e[d] for e in errors
                                    for d in targets.loss_levels]).to_json(),
          'curve_log_error': times_lib.stat([e['curve_log_error'] for e in errors]).to_json()}


def _spectral(spectrum, m, n, num_classes, grid, eval_every, targets):
  """The spectral predictions of the grid (None for a configuration with weight
  decay, which simulate_modes does not model) and their seconds, extrapolation included."""
  t0 = time.perf_counter()
  ex = subset.extrapolate(*spectrum, m, n)
  out = []
  for hp in grid:
    if hp.weight_decay:
      out.append(None)
      continue
    t1 = time.perf_counter()
    steps, curve = subset.simulate_modes(ex['lam'], ex['energy'], hp, n=n,
                                         num_classes=num_classes, eval_every=eval_every)
    nan = np.full((1, len(curve)), np.nan)  # no accuracy: its times are None
    out.append(predict.from_curves(
        'spectral', hp, steps, {'train_loss': curve[None], 'train_acc': nan, 'test_loss': nan,
                                'test_acc': nan}, seconds=time.perf_counter() - t1,
        targets=targets))
  return out, time.perf_counter() - t0, ex


def run_subset(config, workdir: str, progress: bool = True) -> dict:
  """The subset study of a `configs/subset.py` or `configs/paper_scale.py` config
  (experiments/subset.py): kernels on the first M samples for each M of `sizes`,
  real runs on all N (evaluated on `eval_samples` of them where set), and the
  replica (SDE, in predict.rank / rank_tol's low-rank basis where set) and
  spectral (MSE) predictions of each run's T_eps and loss levels, against the
  real runs beside the best_constant and horizon_fraction baselines, with each
  method's cost ratio (real training seconds over kernel + prediction, both
  measured in this run or its cached stages); writes summary.json, subset.png and
  figure.json; returns the figure's numbers."""
  checks.check_subset(config)
  wd.claim(workdir, config.to_dict(), free=('experiment.predict',))  # predicted afresh
  e = config.experiment
  ft, pc = e.finetune, e.predict
  keys = sgd.run_keys(e.seed)
  task, model, variables, pre_report, _, _ = finetune.target_from_config(
      e, workdir, keys['head'], progress)
  params = variables['params']
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  n, num_classes = len(task.x_train), task.num_classes
  grid = subset_grid(config, n)
  targets = checks.targets_from_config(pc)
  eval_idx = finetune.eval_subset(n, config.eval_samples, e.seed)
  # In the real runs' hash only when set: the whole-set runs keep theirs.
  eval_key = {} if eval_idx is None else {'eval_idx': wd.digest(eval_idx)}
  base = {'checkpoint': wd.config_hash(pre_report), 'model': e.model.to_dict(),
          'target': e.target.to_dict(), 'seed': e.seed, **head_key(ft)}

  kernels, spectra, spectrum_seconds = {}, {}, {}
  for m in config.sizes:
    lin = cached_kernel(os.path.join(workdir, f'kernel_M{m}.npz'),
                        wd.config_hash({**base, 'kernel': e.kernel.to_dict(), 'm': m}),
                        apply_fn, params, task.x_train[:m], task.x_test, e.kernel,
                        progress=progress)
    kernels[m] = lin
    if 'mse' in config.losses:
      # One eigendecomposition per M (minutes at M·C = 5,000 on 2 cores, so only where
      # spectral uses it): the spectrum and the MSE residual energies serve the plot and
      # every MSE configuration, and count in spectral's cost.
      t0 = time.perf_counter()
      spectra[m] = subset.spectrum(lin.k_train_train, lin.fx_train_0, task.y_train[:m], 'mse')
      spectrum_seconds[m] = time.perf_counter() - t0

  rows, by_loss, errors_by_loss = [], {}, {}
  for loss in config.losses:
    cfg = copy.deepcopy(e)
    cfg.finetune.loss = loss
    reals, runs = [], []
    for hp in grid:
      order = sgd.batch_order(jax.random.fold_in(keys['order'], 0), n, hp.batch_size, hp.steps,
                              ft.sampling)
      run_hash = wd.config_hash({**base, 'hp': hp.to_dict(), 'loss': loss,
                                 'eval_every': ft.eval_every, 'order': wd.digest(order),
                                 **eval_key})
      real, curves = real_run(apply_fn, params, task, hp, order, cfg,
                              os.path.join(workdir, 'runs', f'{loss}_{config_name(hp)}'),
                              run_hash, progress, eval_idx=eval_idx)
      runs.append((real, curves))
      reals.append(real_results([curves], [real], targets))
    constants = _constants(reals, grid, targets, pc.horizon_fraction, ft.eval_every)

    preds, costs = {}, {}  # (method, M) -> [Prediction or None] per configuration; seconds
    for m in config.sizes:
      t0 = time.perf_counter()
      preds['replica', m] = predict.predict(
          kernels[m], task.y_train[:m], task.y_test, grid, key=keys['sde'], method='sde',
          loss=loss, eval_every=ft.eval_every, targets=targets, num_paths=pc.num_paths, dt=pc.dt,
          population=n, sampling=ft.sampling, rank=pc.rank, rank_tol=pc.rank_tol)
      costs['replica', m] = time.perf_counter() - t0  # λ_max or the low-rank basis included
      if loss == 'mse':
        preds['spectral', m], secs, _ = _spectral(spectra[m], m, n, num_classes, grid,
                                                  ft.eval_every, targets)
        costs['spectral', m] = spectrum_seconds[m] + secs
    by_loss[loss] = {'train_seconds': float(sum(r['train_seconds'] for r, _ in runs)),
                     'costs': {f'{p}_M{m}': c for (p, m), c in costs.items()}}
    errors = errors_by_loss[loss] = {}  # predictor (method_M<m> or baseline) -> per config
    for i, (hp, real, (run, curves)) in enumerate(zip(grid, reals, runs)):
      name = f'{loss}_{config_name(hp)}'
      row = {'name': name, 'loss': loss, 'hparams': hp.to_dict(), 'horizon': hp.steps,
             'epochs': hp.steps * hp.batch_size / n,
             'real_t_eps': real.times['t_eps'].value,
             'real_times': {d: real.times[d].value for d in ('t_eps', *targets.loss_levels)},
             'real_train_seconds': run['train_seconds'], 'steps': curves['steps'],
             'real_train_loss': curves['train_loss'], 'by_size': [], 'baselines': {}}
      for b in TRIVIAL_BASELINES:
        err = _subset_errors(None, constants[b][i], real, hp, targets)
        errors.setdefault(b, []).append(err)
        row['baselines'][b] = {d: x.value for d, x in err.items()}
      for m in config.sizes:
        entry = {'m': m, 'kernel_seconds': kernels[m].seconds}
        for method in ('replica', 'spectral'):
          pred = preds.get((method, m), [None] * len(grid))[i]
          if pred is None:
            continue
          err = _subset_errors(pred, None, real, hp, targets)
          errors.setdefault(f'{method}_M{m}', []).append(err)
          entry.update({
              f'{method}_t_eps': None if pred.diverged else pred.times['t_eps'].value,
              f'{method}_times': None if pred.diverged else {
                  d: pred.times[d].value for d in ('t_eps', *targets.loss_levels)},
              f'{method}_error': err['t_eps'].value,
              f'{method}_errors': {d: x.to_json() for d, x in err.items()},
              f'{method}_seconds': pred.seconds, f'{method}_rank': pred.rank,
              f'{method}_train_loss': None if pred.diverged else pred.curves['train_loss'].mean})
        row['by_size'].append(entry)
      rows.append(row)

  # Per predictor, pooled over the losses it predicts and per loss: its errors, and its cost
  # ratio, the real training seconds of those runs over the kernel (shared by the losses)
  # and the predictor's seconds on them.
  aggregate = []
  names = list(dict.fromkeys(p for v in errors_by_loss.values() for p in v))
  for p in names:
    for group in (*config.losses, 'all'):
      losses_ = [l for l in config.losses if group in (l, 'all') and p in errors_by_loss[l]]
      if not losses_ or (group == 'all' and len(losses_) == 1):  # the one loss's row
        continue
      agg = _subset_aggregate([x for l in losses_ for x in errors_by_loss[l][p]], targets)
      row = {'predictor': p, 'loss': group, 'runs': agg['t_eps']['n'], **agg}
      if p not in TRIVIAL_BASELINES:
        m = int(p.rsplit('_M', 1)[1])
        cost = kernels[m].seconds + sum(by_loss[l]['costs'][p] for l in losses_)
        train = sum(by_loss[l]['train_seconds'] for l in losses_)
        row.update(predict_seconds=cost, train_seconds=train, cost_ratio=train / cost)
      aggregate.append(row)

  summary = {'config': config.to_dict(), 'n_train': n, 'num_classes': num_classes,
             'eval_samples': 0 if eval_idx is None else len(eval_idx),
             'kernel_seconds': {str(m): kernels[m].seconds for m in config.sizes},
             'spectrum_seconds': {str(m): v for m, v in spectrum_seconds.items()},
             'spectra': {str(m): lam for m, (lam, _) in spectra.items()}, 'rows': rows,
             'by_loss': by_loss, 'aggregate': aggregate}
  wd.write_json(os.path.join(workdir, 'summary.json'), summary)
  summary = wd.read_json(os.path.join(workdir, 'summary.json'))
  figure = plots.subset(summary, os.path.join(workdir, 'subset.png'))
  numbers = {'figure': figure, 'table': subset_tables(summary),
             'aggregate': summary['aggregate'],
             'errors': [{'run': r['name'], 'm': x['m'], 'replica': x.get('replica_error'),
                         'spectral': x.get('spectral_error')}
                        for r in summary['rows'] for x in r['by_size']]}
  write_figure(workdir, config, numbers)
  return numbers


def subset_tables(summary: dict) -> list[str]:
  """A subset study's summary.json as markdown: per run and M the predicted and
  real T_eps, then per predictor its errors and cost ratio."""
  # Stats read back from JSON hold an infinite error as the string 'inf'.
  num = lambda v: None if v is None else float(v)  # noqa: E731
  pct = lambda v: _fmt(num(v), pct=True)  # noqa: E731
  lines = [f"N = {summary['n_train']}, real runs evaluated on "
           f"{summary['eval_samples'] or 'all'} training samples", '',
           '| run | horizon (epochs) | M | replica T_eps (error) | spectral T_eps (error) | '
           'real T_eps | real loss levels |', '|---|---|---|---|---|---|---|']
  for r in summary['rows']:
    levels = ', '.join(_fmt(v) for d, v in r['real_times'].items() if d != 't_eps')
    for x in r['by_size']:
      cell = lambda method, x=x: (  # noqa: E731
          f"{_fmt(x[method + '_t_eps'])} ({pct(x[method + '_error'])})"
          if method + '_errors' in x else '-')
      lines.append(f"| {r['name']} | {r['horizon']} ({r['epochs']:.2g}) | {x['m']} | "
                   f"{cell('replica')} | {cell('spectral')} | {_fmt(r['real_t_eps'])} | "
                   f'{levels} |')
  lines += ['', '| predictor | loss | runs | T_eps error median / max | loss levels median / '
            'max (misses) | curve error median | predict vs train seconds |',
            '|---|---|---|---|---|---|---|']
  for a in summary['aggregate']:
    t, lv = a['t_eps'], a['levels']
    cost = (f"{a['predict_seconds']:.0f} vs {a['train_seconds']:.0f} ({a['cost_ratio']:.1f}×)"
            if 'cost_ratio' in a else 'baseline')
    lines.append(f"| {a['predictor']} | {a['loss']} | {a['runs']} | {pct(t['median'])} / "
                 f"{pct(t['max'])} | {pct(lv['median'])} / {pct(lv['max'])} ({lv['misses']}) | "
                 f"{_fmt(num(a['curve_log_error']['median']))} | {cost} |")
  return lines


def write_figure(workdir: str, config, numbers: dict) -> str:
  """A figure script's numbers as <workdir>/figure.json, beside its config."""
  path = os.path.join(workdir, 'figure.json')
  wd.write_json(path, {'config': config.to_dict(), **numbers})
  return path


def _fmt(v, pct=False):
  if v is None:
    return '-'
  if np.isinf(v):
    return '∞'
  return f'{100 * v:.0f}%' if pct else f'{v:.4g}'


def write_csv(s: summary_lib.Summary, path: str) -> None:
  """One line per configuration: hyper-parameters, the kernel drift and its
  diagnosis (summary.KernelDiagnosis, empty where there is none), real times,
  then per predictor its times (simulated ones) and errors on every definition."""
  diagnosis = [f.name for f in dataclasses.fields(summary_lib.KernelDiagnosis)]
  head = ['name', 'lr', 'batch_size', 'momentum', 'weight_decay', 'horizon', 'kernel_drift',
          *(f'kernel_{d}' for d in diagnosis),
          'real_train_seconds', 'predicted_seconds_t_eps', 'real_seconds_t_eps']
  head += [f'real_{d}' for d in s.definitions] + [f'real_spread_{d}' for d in s.definitions]
  for p in s.predictors:
    if p in s.configs[0].predicted:
      head += [f'{p}_{d}' for d in s.definitions] + [f'{p}_seconds']
    head += [f'{p}_err_{d}' for d in (*s.definitions, 'curve_log_error')]
  lines = [','.join(head)]
  for r in s.configs:
    hp = r.hparams
    diag = r.real.diagnosis
    vals = [r.name, hp['lr'], hp['batch_size'], hp['momentum'], hp['weight_decay'], r.horizon,
            r.real.kernel_drift, *(diag and getattr(diag, d) for d in diagnosis),
            float(np.mean(r.real.train_seconds)), r.seconds.predicted_t_eps, r.seconds.real_t_eps]
    vals += [r.real.times[d].value for d in s.definitions]
    vals += [r.real.spread[d] for d in s.definitions]
    for p in s.predictors:
      if p in r.predicted:
        pred = r.predicted[p]
        vals += [None if pred.diverged else pred.times[d].value for d in s.definitions]
        vals += [pred.seconds]
      vals += [r.errors[p][d].value for d in (*s.definitions, 'curve_log_error')]
    lines.append(','.join('' if v is None else (f'{v:.6g}' if isinstance(v, float) else str(v))
                          for v in vals))
  wd.write_bytes(path, ('\n'.join(lines) + '\n').encode())


def method_cost(costs: dict[str, float], method: str) -> float:
  """Seconds one method's prediction of the grid costs: its kernel (the one at w0, or
  its own '<method>_kernel_seconds'), its real probe if it has one
  ('<method>_probe_seconds'), its simulations and the step timing."""
  kernel = costs.get(f'{method}_kernel_seconds', costs['kernel_seconds'])
  return (kernel + costs.get(f'{method}_probe_seconds', 0.0) + costs[f'{method}_seconds']
          + costs['step_timing_seconds'])


def _label(predictor: str, s: summary_lib.Summary, kind: bool = True) -> str:
  """A predictor as the tables list it: a method that trains real steps marked as
  not training-free, and with `kind`, method or baseline."""
  marks = ([('method' if predictor in s.methods else 'baseline')] if kind else []) + (
      ['not training-free'] if predictor in predict.NOT_TRAINING_FREE else [])
  return f"{predictor} ({', '.join(marks)})" if marks else predictor


def format_table(s: summary_lib.Summary) -> str:
  """The per-configuration table and the aggregates with baselines, as printed text."""
  lines = []
  fracs = ','.join(f'{f:g}' for f in s.targets['levels'])
  head = f"{'configuration':26s} {'real T_eps':>10s} {'T(L0/' + fracs + ')':>15s} {'drift':>6s}"
  for m in s.methods:
    head += f" | {m + ' T_eps [5-95%]':>24s} {'err':>5s}"
  lines += ['', head]
  for r in s.configs:
    real = r.real.times
    stopped = [k for k in r.real.diverged_at if k is not None]
    t_real = f'diverged@{stopped[0]}' if r.real.diverged else _fmt(real['t_eps'].value)
    levels = ','.join(_fmt(real[d].value) for d in s.definitions if d.startswith('t_loss_'))
    line = f"{r.name:26s} {t_real:>10s} {levels:>15s} {_fmt(r.real.kernel_drift):>6.6s}"
    for m in s.methods:
      p = r.predicted[m]
      if p.diverged:
        txt = f'diverges (lr > {p.lr_limit:.3g})'
      else:
        t = p.times['t_eps']
        txt = f'{_fmt(t.value)} [{_fmt(t.q05)}-{_fmt(t.q95)}]'
      line += f" | {txt:>24s} {_fmt(r.errors[m]['t_eps'].value, True):>5s}"
    lines.append(line)
  n = len(s.configs)
  lines += ['', f"errors over the {n} configurations (median / max; misses: a level reached on "
            "one side only, counted at its error at the horizon; ∞: divergence on one side):",
            f"{'predictor':41s} {'T_eps':>12s} {'loss levels':>20s} {'acc levels':>20s} "
            f"{'curve err':>9s}  verdict"]
  for p in s.predictors:
    a = s.aggregate[p]
    lv, al = a['levels'], a['acc_levels']
    verdict = ''
    if p in s.verdicts:
      v = s.verdicts[p]
      verdict = ('WORKS: beats every baseline' if v.works else
                 f"does not work here: loses to {', '.join(v.loses_to)}")
    lines.append(
        f"{_label(p, s):41s} {_fmt(a['t_eps'].median, True):>5s} / "
        f"{_fmt(a['t_eps'].max, True):>4s}  {_fmt(lv.median, True):>5s} / {_fmt(lv.max, True):>4s}"
        f" ({lv.misses} miss) {_fmt(al.median, True):>5s} / {_fmt(al.max, True):>4s} "
        f"({al.misses} miss) {_fmt(a['curve_log_error'].median):>9s}  {verdict}")
  lines.append(
      f"real seed-to-seed spread (max-min)/mean, median over configurations: T_eps "
      f"{_fmt(s.seed_spread['t_eps'], True)}, "
      + ', '.join(f"{d} {_fmt(s.seed_spread[d], True)}" for d in s.definitions
                  if d.startswith('t_loss_'))
      + f"; kernel drift ‖Θ(w_T) - Θ(w_0)‖/‖Θ(w_0)‖: median {_fmt(s.kernel_drift.median)}, "
      f"max {_fmt(s.kernel_drift.max)}")
  diags = [r.real.diagnosis for r in s.configs if r.real.diagnosis is not None]
  if diags:
    med = lambda f: _fmt(_median([getattr(d, f) for d in diags]))  # noqa: E731
    lines.append(
        f"kernel change, median over configurations: scale ‖Θ_T‖/‖Θ_0‖ {med('scale')}, shape "
        f"drift {med('shape_drift')}; features ×{med('feature_growth')}, head "
        f"×{med('head_growth')}; head part ×{med('head_part_growth')}, backbone part "
        f"×{med('backbone_part_growth')} (share of Θ {med('backbone_share_0')} -> "
        f"{med('backbone_share_T')})")
  se = s.seconds_errors
  lines.append(f"seconds per step against the real runs' (median error): timed "
               f"{_fmt(se['measured_step_error'].median, True)}, from XLA's FLOPs "
               f"{_fmt(se['flops_step_error'].median, True)}; predicted seconds to T_eps: "
               f"median error {_fmt(se['t_eps_error'].median, True)}")
  k = s.kernel
  lines.append(f"kernel: symmetric to {k['asymmetry']:.1e}, eigenvalues in [{k['min_eig']:.3g}, "
               f"{k['max_eig']:.3g}] (checked PSD)")
  c, first = s.costs, s.methods[0]
  probe = (f", linear probe {c['probe_seconds']:.1f} (in both)" if c.get('probe_seconds')
           else '')
  lines.append(f"cost: predict {c['predict_seconds']:.1f} s (kernel {c['kernel_seconds']:.1f}, "
               f"{first} {c[f'{first}_seconds']:.1f}, step timing {c['step_timing_seconds']:.1f}"
               f"{probe}) vs train {c['train_seconds']:.1f} s: {c['ratio']:.1f}x cheaper")
  for m in s.methods:
    if m in predict.NOT_TRAINING_FREE:
      lines.append(f"cost of {m} (not training-free): real probe {c[f'{m}_probe_seconds']:.1f} s "
                   f"+ its kernel {c[f'{m}_kernel_seconds']:.1f} + simulations "
                   f"{c[f'{m}_seconds']:.1f} + step timing {c['step_timing_seconds']:.1f} = "
                   f"{method_cost(c, m):.1f} s vs train {c['train_seconds']:.1f} s")
  lines += [f'note: {t}' for t in s.notes]
  return '\n'.join(lines)


def markdown_table(summaries: dict[str, summary_lib.Summary]) -> list[str]:
  """The accuracy table of several targets (the README's): per target, every
  method and baseline with its errors and whether the method works there."""
  fracs = {','.join(f'{f:g}' for f in s.targets['levels']) for s in summaries.values()}
  lines = [f"| target | predictor | T_eps error median / max | loss levels L0/{'; '.join(fracs)}: "
           'median / max (misses) | accuracy levels: median / max (misses) | curve error median '
           '| works? | real seed spread T_eps / levels | kernel drift median | predict vs train '
           'cost |', '|---|---|---|---|---|---|---|---|---|---|']
  for name, s in summaries.items():
    ft = s.config['finetune']
    target = (f"{name}: N = {s.task['n_train']}, {len(s.configs)} configs × {ft['seeds']} seeds, "
              f"T = {ft['steps']}")
    lv_spread = _median([s.seed_spread[d] for d in s.definitions if d.startswith('t_loss_')])
    c = s.costs
    for p in s.predictors:
      a = s.aggregate[p]
      lv, al = a['levels'], a['acc_levels']
      if p in s.verdicts:
        v = s.verdicts[p]
        works = 'yes' if v.works else 'no: loses to ' + ', '.join(v.loses_to)
        cost = method_cost(c, p)
        cost = f"{cost:.0f} s vs {c['train_seconds']:.0f} s ({c['train_seconds'] / cost:.1f}×)"
      else:
        works, cost = 'baseline', '-'
      lines.append(
          f"| {target} | {_label(p, s, kind=False)} | {_fmt(a['t_eps'].median, True)} / "
          f"{_fmt(a['t_eps'].max, True)} | "
          f"{_fmt(lv.median, True)} / {_fmt(lv.max, True)} ({lv.misses}) | "
          f"{_fmt(al.median, True)} / {_fmt(al.max, True)} ({al.misses}) | "
          f"{_fmt(a['curve_log_error'].median)} | {works} | "
          f"{_fmt(s.seed_spread['t_eps'], True)} / {_fmt(lv_spread, True)} | "
          f"{_fmt(s.kernel_drift.median)} | {cost} |")
  return lines
