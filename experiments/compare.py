r"""Predicted vs real fine-tuning over a hyper-parameter grid: the main job.

  python -m experiments.compare --config ntk_time/configs/default.py --workdir workdirs/default

Computes the kernel once, predicts every configuration with each of
`predict.methods` (by default the paper's SDE, the exact simulator replaying
the real batch orders, and the head-aware model on the same orders; also
'full_batch', the deterministic ODE limit), fine-tunes every
configuration for real with the same batch orders, and writes summary.json,
summary.csv and three PNG figures to the workdir.

A workdir belongs to one config. Rerunning in it skips every finished stage
(pretraining, kernel, predictions, real runs) and resumes an interrupted real
run from its last saved state, with the same numbers as an uninterrupted run;
a workdir of another config is refused unless --overwrite is given, which
deletes it first.
"""

import dataclasses
import os
import time
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import jax.experimental
import numpy as np
from ml_collections import config_flags

from ntk_time import configs as config_lib
from ntk_time import data
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import plots
from ntk_time import predict
from ntk_time import sgd
from ntk_time import workdir as wd


TIMES = ('t_eps', 't_target_loss', 't_eps_acc', 't_target_acc')


def config_name(hp: sgd.SGD) -> str:
  return f'lr{hp.lr:g}_B{hp.batch_size}_m{hp.momentum:g}_wd{hp.weight_decay:g}'


def _predictions(lin, task, configs, orders, config, key_sde, targets, path, pred_hash, reuse):
  """Every method's predictions, reused from `path` if made for `pred_hash` (and `reuse`).

  Always returned as read back from JSON, so that a first run and a rerun
  compute the summary from the same numbers.
  """
  if not (reuse and os.path.exists(path) and wd.read_json(path).get('config_hash') == pred_hash):
    ft, pc = config.finetune, config.predict
    dtype = np.float64 if pc.dtype == 'float64' else np.float32
    common = dict(loss=ft.loss, eval_every=ft.eval_every, targets=targets, dtype=dtype)
    per_method = {'sde': dict(key=key_sde, num_paths=pc.num_paths, dt=pc.dt),
                  'replay': dict(orders=orders), 'head_aware': dict(orders=orders),
                  'full_batch': {}}
    with jax.experimental.enable_x64(pc.dtype == 'float64'):
      preds = {m: predict.predict(lin, task.y_train, task.y_test, configs,
                                  method=config_lib.METHODS[m], **per_method[m], **common)
               for m in pc.methods}
    wd.write_json(path, {'config_hash': pred_hash, **preds})
  preds = wd.read_json(path)
  del preds['config_hash']
  return preds


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
                      sketch_key=jax.random.key(k.sketch_seed), progress=progress)
  wd.write_npz(path, config_hash=kernel_hash, **lin.arrays())
  return lin


def real_run(apply_fn, params, task, hp, order, config, run_dir, run_hash, k0_sub, drift_x,
              progress):
  """One real fine-tuning run (reused if finished, resumed if interrupted), with its
  kernel drift (None after a divergence)."""
  done = os.path.join(run_dir, 'run.json')
  if os.path.exists(done) and wd.read_json(done).get('config_hash') == run_hash:
    run = wd.read_json(done)
    arrays = wd.read_npz(os.path.join(run_dir, 'curves.npz'))
    return run, arrays
  ft = config.finetune
  result = finetune.finetune(apply_fn, params, task, hp, order, loss=ft.loss,
                             eval_every=ft.eval_every, workdir=run_dir,
                             checkpoint_every=ft.checkpoint_every, progress=progress)
  run = wd.read_json(done)
  if k0_sub is not None and result['diverged_at'] is None:
    # Θ on a fixed subset at the real final weights vs at w0 (DESIGN §3.5).
    k1_sub, _ = ntk.empirical_ntk(apply_fn, result['params'], drift_x,
                                  block_size=config.kernel.block_size)
    run['kernel_drift'] = ntk.relative_drift(k0_sub, k1_sub)
  run['config_hash'] = run_hash
  wd.write_json(done, run)
  return run, wd.read_npz(os.path.join(run_dir, 'curves.npz'))


def _real_times(curves_per_seed, targets):
  # A diverged run (NaN from some step on) has no training time.
  per_seed = [predict.training_times(c['steps'], c['train_loss'], c['train_acc'], targets)
              if np.all(np.isfinite(c['train_loss'])) else None for c in curves_per_seed]
  out = {}
  for name in targets.definitions:
    vals = [None if t is None else t[name] for t in per_seed]
    ok = [v for v in vals if v is not None]
    mean = float(np.mean(vals)) if len(ok) == len(vals) else None
    # With one seed there is no spread to report, rather than a spread of 0.
    spread = (max(ok) - min(ok)) / mean if mean and len(vals) > 1 else None
    out[name] = {'per_seed': vals, 'mean': mean, 'spread': spread}
  return out


@dataclasses.dataclass
class Predicted:
  """Everything of a comparison that comes before the real runs (see `predicted`).

  base: what identifies the starting point (checkpoint, model, task, seed), for
  hashes; orders: per configuration [seeds, T, B] batch orders; step_seconds,
  flop_seconds and flops: per batch size, seconds of one real step measured and
  from XLA's FLOP count, and that count; preds: per method, one dict per
  configuration (predict.predict's, as read back from predictions.json).
  """
  configs: list[sgd.SGD]
  targets: predict.Targets
  task: data.Task
  params: Any
  apply_fn: Callable
  pre_report: dict
  base: dict
  lin: ntk.Linearization
  kernel_report: dict
  orders: list[np.ndarray]
  step_seconds: dict[int, float]
  flop_seconds: dict[int, float]
  flops: dict[int, float]
  step_timing_seconds: float
  preds: dict[str, list[dict]]


def predicted(config, workdir: str, progress: bool = True, overwrite: bool = False,
              reuse: bool = True) -> Predicted:
  """Checks the config, claims the workdir, pretrains (or loads), computes the kernel,
  times the real step and predicts every configuration with every method.

  reuse=False recomputes the kernel and the predictions even when the workdir has
  them for this config (runs over several processes do: they must all compute).
  """
  configs = config_lib.check(config)  # before any work is done
  ft, pc = config.finetune, config.predict
  targets = config_lib.targets_from_config(pc)
  wd.claim(workdir, config.to_dict(), overwrite)
  keys = sgd.run_keys(config.seed)
  key_head, key_order, key_sde, key_time = keys['head'], keys['order'], keys['sde'], keys['time']

  # Pretrained model with a fresh head on the target task.
  task, model, variables, pre_report, ckpt_path = finetune.target_from_config(
      config, workdir, key_head, progress)
  params = variables['params']
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  features_fn = models.make_features_fn(model, variables['batch_stats'])

  # The kernel, once.
  base = {'checkpoint': wd.config_hash(pre_report), 'ckpt_path': os.path.abspath(ckpt_path),
          'model': config.model.to_dict(), 'target': config.target.to_dict(), 'seed': config.seed}
  kernel_hash = wd.config_hash({**base, 'kernel': config.kernel.to_dict(), 'features': True})
  lin = cached_kernel(os.path.join(workdir, 'kernel.npz'), kernel_hash, apply_fn, params,
                      task.x_train, task.x_test, config.kernel, features_fn, progress, reuse)
  kernel_report = ntk.check_kernel(lin.k_train_train)

  # Same batch orders for the real runs and the replaying simulator.
  orders = [np.stack([sgd.batch_order(jax.random.fold_in(key_order, s), len(task.x_train),
                                      hp.batch_size, hp.steps) for s in range(ft.seeds)])
            for hp in configs]

  # Predictions: the paper's SDE; the exact simulator of the linearised model on
  # the batch orders the real runs will use; the head-aware model on the same orders.
  t0 = time.perf_counter()
  # Seconds per step depend on the batch size only, so one timing per batch size; and,
  # as a second estimate, XLA's FLOP count of each step, calibrated by the timing of the
  # smallest batch.
  sizes = sorted({hp.batch_size for hp in configs})
  step_seconds = {b: finetune.seconds_per_step(
      apply_fn, params, task, sgd.SGD(lr=1e-3, batch_size=b, steps=1), loss=ft.loss,
      key=jax.random.fold_in(key_time, b)) for b in sizes}
  flops = {b: finetune.step_flops(apply_fn, params, task, sgd.SGD(lr=1e-3, batch_size=b, steps=1),
                                  loss=ft.loss) for b in sizes}
  flop_seconds = {b: flops[b] * step_seconds[sizes[0]] / flops[sizes[0]] for b in sizes}
  step_timing_seconds = time.perf_counter() - t0
  pred_hash = wd.config_hash({'kernel': kernel_hash, 'grid': [hp.to_dict() for hp in configs],
                              'predict': pc.to_dict(), 'loss': ft.loss,
                              'eval_every': ft.eval_every, 'orders': wd.digest(*orders)})
  preds = _predictions(lin, task, configs, orders, config, key_sde, targets,
                       os.path.join(workdir, 'predictions.json'), pred_hash, reuse)
  return Predicted(configs=configs, targets=targets, task=task, params=params,
                   apply_fn=apply_fn, pre_report=pre_report, base=base, lin=lin,
                   kernel_report=kernel_report, orders=orders, step_seconds=step_seconds,
                   flop_seconds=flop_seconds, flops=flops,
                   step_timing_seconds=step_timing_seconds, preds=preds)


def run(config, workdir: str, progress: bool = True, overwrite: bool = False) -> dict:
  """Runs the comparison; returns the summary also written to summary.json."""
  t_start = time.perf_counter()
  pr = predicted(config, workdir, progress, overwrite)
  ft, pc = config.finetune, config.predict
  configs, targets, task, params, apply_fn = pr.configs, pr.targets, pr.task, pr.params, \
      pr.apply_fn
  lin, orders, preds, step_seconds = pr.lin, pr.orders, pr.preds, pr.step_seconds
  n_drift = min(config.kernel.drift_samples, len(task.x_train))
  drift_x = task.x_train[:n_drift]
  # Θ(w0) on the drift subset is a block of the full kernel already computed.
  if lin.traced:
    k0_sub = ntk.empirical_ntk(apply_fn, params, drift_x, block_size=config.kernel.block_size)[0]
  else:
    k0_sub = lin.k_train_train[:n_drift, :n_drift]
  k0_sub = k0_sub if n_drift else None

  # Real fine-tuning, every configuration and seed.
  rows = []
  bar_desc = f'{len(configs)} configs × {ft.seeds} seeds'
  for i, hp in enumerate(configs):
    runs, curves = [], []
    for s in range(ft.seeds):
      name = f'{config_name(hp)}_s{s}'
      if progress:
        print(f'[{bar_desc}] real run {i * ft.seeds + s + 1}: {name}')
      run_hash = wd.config_hash({**pr.base, 'hp': hp.to_dict(), 'seed_run': s, 'loss': ft.loss,
                                 'eval_every': ft.eval_every, 'drift': n_drift})
      r, c = real_run(apply_fn, params, task, hp, orders[i][s], config,
                       os.path.join(workdir, 'runs', name), run_hash,
                       k0_sub if s == 0 else None, drift_x, progress)
      runs.append(r)
      curves.append(c)
    real_times = _real_times(curves, targets)
    real_mean_loss = np.mean([c['train_loss'] for c in curves], axis=0)
    row = {'name': config_name(hp), 'hparams': hp.to_dict(), 'horizon': hp.steps,
           'eval_every': ft.eval_every, 'eps': targets.eps, 'steps': curves[0]['steps'],
           'real': {'curves': {k: [c[k] for c in curves] for k in predict.CURVES},
                    'times': real_times,
                    'train_seconds': [r['train_seconds'] for r in runs],
                    'seconds_per_step': float(np.mean([r['seconds_per_step'] for r in runs])),
                    'diverged_at': [r.get('diverged_at') for r in runs],
                    'kernel_drift': runs[0].get('kernel_drift')},
           'predicted': {}, 'errors': {}}
    for method, results in preds.items():
      p = results[i]
      row['predicted'][method] = p
      comparable = not p['diverged'] and np.all(np.isfinite(real_mean_loss))
      err = {'curve_log_error': None if not comparable else
             predict.curve_log_error(p['curves']['train_loss']['mean'], real_mean_loss)}
      for t in TIMES:
        if t in real_times:
          pt = None if p['diverged'] else p['times'][t]['mean_curve']
          err[t] = predict.relative_error(pt, real_times[t]['mean'])
      row['errors'][method] = err
    sps = step_seconds[hp.batch_size]
    first = preds[pc.methods[0]][i]
    t_pred = None if first['diverged'] else first['times']['t_eps']['mean_curve']
    t_real = real_times['t_eps']['mean']
    real_sps = row['real']['seconds_per_step']
    row['seconds'] = {
        'measured_step': sps, 'flops_step': pr.flop_seconds[hp.batch_size],
        'step_flops': pr.flops[hp.batch_size], 'real_step': real_sps,
        'measured_step_error': predict.relative_error(sps, real_sps),
        'flops_step_error': predict.relative_error(pr.flop_seconds[hp.batch_size], real_sps),
        'predicted_t_eps': predict.to_seconds(t_pred, sps),
        'predicted_t_eps_flops': predict.to_seconds(t_pred, pr.flop_seconds[hp.batch_size]),
        'real_t_eps': predict.to_seconds(t_real, real_sps)}
    row['seconds']['t_eps_error'] = predict.relative_error(row['seconds']['predicted_t_eps'],
                                                           row['seconds']['real_t_eps'])
    rows.append(row)

  # The cost of a prediction: the kernel, the first method's simulations, the step timing.
  costs = {'kernel_seconds': lin.seconds, 'step_timing_seconds': pr.step_timing_seconds,
           'train_seconds': float(sum(np.mean(r['real']['train_seconds']) for r in rows)),
           **{f'{m}_seconds': float(sum(p['seconds'] for p in preds[m])) for m in preds}}
  costs['predict_seconds'] = costs['kernel_seconds'] + costs[f'{pc.methods[0]}_seconds'] + \
      costs['step_timing_seconds']
  costs['ratio'] = costs['train_seconds'] / costs['predict_seconds']
  summary = {'config': config.to_dict(), 'methods': list(preds), 'pretrain': pr.pre_report,
             'task': {'n_train': len(task.x_train), 'n_test': len(task.x_test),
                      'classes': task.class_names, 'num_params': models.num_params(params)},
             'kernel': pr.kernel_report, 'targets': targets.__dict__, 'costs': costs,
             'aggregate': aggregate(rows, list(preds)), 'configs': rows,
             'wall_seconds': time.perf_counter() - t_start}
  wd.write_json(os.path.join(workdir, 'summary.json'), summary)
  write_csv(rows, os.path.join(workdir, 'summary.csv'))
  summary['figures'] = plots.all_figures(wd.read_json(os.path.join(workdir, 'summary.json')),
                                         workdir)
  return summary


def aggregate(rows, methods) -> dict:
  """Median and max relative errors per method and definition, and the seed spread."""
  out = {}
  for m in methods:
    out[m] = {}
    for t in TIMES + ('curve_log_error',):
      vals = [r['errors'][m].get(t) for r in rows]
      ok = [v for v in vals if v is not None]
      out[m][t] = {'median': float(np.median(ok)) if ok else None,
                   'max': float(np.max(ok)) if ok else None,
                   'missing': len(vals) - len(ok)}
  spreads = [r['real']['times']['t_eps']['spread'] for r in rows]
  out['real_seed_spread_t_eps'] = {'median': float(np.median([s for s in spreads if s is not None]))
                                   if any(s is not None for s in spreads) else None}
  for k in ('measured_step_error', 'flops_step_error', 't_eps_error'):
    vals = [r['seconds'][k] for r in rows if r['seconds'][k] is not None]
    out[f'seconds_{k}'] = {'median': float(np.median(vals)) if vals else None,
                           'max': float(np.max(vals)) if vals else None}
  drifts = [r['real']['kernel_drift'] for r in rows if r['real']['kernel_drift'] is not None]
  out['kernel_drift'] = {'median': float(np.median(drifts)) if drifts else None,
                         'max': float(np.max(drifts)) if drifts else None}
  return out


def _fmt(v, pct=False):
  if v is None:
    return '-'
  return f'{100 * v:.0f}%' if pct else f'{v:.4g}'


def write_csv(rows, path):
  """One line per configuration: the real times, then each method's, errors and seconds."""
  methods = list(rows[0]['predicted'])
  head = ['name', 'lr', 'batch_size', 'momentum', 'weight_decay', 'horizon', 'real_t_eps',
          'real_t_eps_spread', 'real_t_target_loss', 'kernel_drift', 'real_train_seconds',
          'predicted_seconds_t_eps', 'real_seconds_t_eps']
  per_method = ('t_eps', 't_eps_q05', 't_eps_q95', 'err_t_eps', 't_target_loss',
                'err_t_target_loss', 'curve_log_error', 'seconds')
  head += [f'{m}_{k}' for m in methods for k in per_method]
  lines = [','.join(head)]
  for r in rows:
    hp, real = r['hparams'], r['real']['times']
    vals = [r['name'], hp['lr'], hp['batch_size'], hp['momentum'], hp['weight_decay'],
            r['horizon'], real['t_eps']['mean'], real['t_eps']['spread'],
            real.get('t_target_loss', {}).get('mean'), r['real']['kernel_drift'],
            float(np.mean(r['real']['train_seconds'])), r['seconds']['predicted_t_eps'],
            r['seconds']['real_t_eps']]
    for m in methods:
      p, err = r['predicted'][m], r['errors'][m]
      times = p['times'] or {}
      t_eps, t_target = times.get('t_eps', {}), times.get('t_target_loss', {})
      vals += [t_eps.get('mean_curve'), t_eps.get('q05'), t_eps.get('q95'), err.get('t_eps'),
               t_target.get('mean_curve'), err.get('t_target_loss'), err['curve_log_error'],
               p['seconds']]
    lines.append(','.join('' if v is None else (f'{v:.6g}' if isinstance(v, float) else str(v))
                          for v in vals))
  wd.write_bytes(path, ('\n'.join(lines) + '\n').encode())


def print_table(summary):
  methods = summary['methods']
  head = f"{'configuration':24s} {'real T_eps':>10s} {'spread':>6s} {'drift':>6s}"
  for m in methods:
    head += f" | {m + ' T_eps [5-95%]':>24s} {'err':>5s}"
  print('\n' + head)
  for r in summary['configs']:
    real = r['real']['times']
    stopped = [k for k in r['real']['diverged_at'] if k is not None]
    t_real = f'diverged@{stopped[0]}' if stopped else _fmt(real['t_eps']['mean'])
    line = (f"{r['name']:24s} {t_real:>10s} "
            f"{_fmt(real['t_eps']['spread'], True):>6s} {_fmt(r['real']['kernel_drift']):.6s}")
    for m in methods:
      p = r['predicted'][m]
      if p['diverged']:
        txt = f"diverges (lr > {p['lr_limit']:.3g})"
      else:
        t = p['times']['t_eps']
        txt = f"{_fmt(t['mean_curve'])} [{_fmt(t['q05'])}-{_fmt(t['q95'])}]"
      line += f" | {txt:>24s} {_fmt(r['errors'][m].get('t_eps'), True):>5s}"
    print(line)
  agg, c = summary['aggregate'], summary['costs']
  print()
  for m in methods:
    a = agg[m]
    tl = a.get('t_target_loss', {})
    print(f"{m:10s} T_eps error: median {_fmt(a['t_eps']['median'], True)}, max "
          f"{_fmt(a['t_eps']['max'], True)} | steps to loss <= target: median error "
          f"{_fmt(tl.get('median'), True)}, max {_fmt(tl.get('max'), True)} "
          f"({tl.get('missing', 0)} of {len(summary['configs'])} not comparable) | curve "
          f"max|log L̂ - log L|: median {_fmt(a['curve_log_error']['median'])}")
  print(f"real seed-to-seed T_eps spread: median {_fmt(agg['real_seed_spread_t_eps']['median'], True)}; "
        f"kernel drift ‖Θ(w_T) - Θ(w_0)‖/‖Θ(w_0)‖: median {_fmt(agg['kernel_drift']['median'])}, "
        f"max {_fmt(agg['kernel_drift']['max'])}")
  print(f"seconds per step, against the real runs' (median error): timed "
        f"{_fmt(agg['seconds_measured_step_error']['median'], True)}, from XLA's FLOPs "
        f"{_fmt(agg['seconds_flops_step_error']['median'], True)}; predicted seconds to T_eps: "
        f"median error {_fmt(agg['seconds_t_eps_error']['median'], True)}")
  k = summary['kernel']
  print(f"kernel: symmetric to {k['asymmetry']:.1e}, eigenvalues in [{k['min_eig']:.3g}, "
        f"{k['max_eig']:.3g}] (checked PSD)")
  others = ', '.join(f"{m} {c[f'{m}_seconds']:.1f} s" for m in methods[1:])
  print(f"cost: predict {c['predict_seconds']:.1f} s (kernel {c['kernel_seconds']:.1f}, "
        f"{methods[0]} {c[f'{methods[0]}_seconds']:.1f}, step timing "
        f"{c['step_timing_seconds']:.1f}) vs train {c['train_seconds']:.1f} s: "
        f"{c['ratio']:.1f}x cheaper" + (f'; {others}' if others else ''))


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  summary = run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  print_table(summary)
  print('\nwrote', os.path.join(_WORKDIR.value, 'summary.json'), 'and summary.csv')
  for f in summary['figures']:
    print('figure:', f)


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  _OVERWRITE = flags.DEFINE_bool('overwrite', False,
                                 'delete a workdir made with another config instead of refusing')
  app.run(main)
