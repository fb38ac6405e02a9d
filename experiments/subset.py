r"""Predict the fine-tuning of N samples from kernels on M ≪ N of them, and check for real.

  python -m experiments.subset --config=ntk_time/configs/subset.py --workdir=workdirs/subset

For every M of `sizes`, the kernel of the first M training samples (cached in
kernel_M<M>.npz); for every loss and configuration, the real fine-tuning on all
N samples (runs/<loss>_<name>/) and two predictions of its T_eps
(ntk_time/subset.py): `replica` (the SDE on the M samples standing for the N,
any loss) and `spectral` (the extrapolated spectrum, MSE only). Writes
summary.json (errors and costs at each M), subset.png and figure.json.
"""

import copy
import os
import time

import jax
import numpy as np

from experiments import compare
from experiments import figures
from ntk_time import configs as config_lib
from ntk_time import finetune
from ntk_time import models
from ntk_time import plots
from ntk_time import predict
from ntk_time import sgd
from ntk_time import subset
from ntk_time import workdir as wd


def _check(config) -> None:
  sizes = list(config.sizes)
  if not sizes or any(not isinstance(m, int) or m < 2 for m in sizes):
    raise ValueError(f'sizes must be integers >= 2, got sizes={sizes}')
  n = config.experiment.target.n_train
  if n != -1 and max(sizes) > n:
    raise ValueError(f'sizes={sizes} has a subset larger than target.n_train={n}')
  for loss in config.losses:
    e = copy.deepcopy(config.experiment)
    e.finetune.loss = loss
    config_lib.check(e)


def run(config, workdir: str, progress: bool = True) -> dict:
  _check(config)
  wd.claim(workdir, config.to_dict())
  e = config.experiment
  ft = e.finetune
  keys = sgd.run_keys(e.seed)
  task, model, variables, pre_report, ckpt_path = finetune.target_from_config(
      e, workdir, keys['head'], progress)
  params = variables['params']
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  n, num_classes = len(task.x_train), task.num_classes
  grid = sgd.grid(ft)
  targets = config_lib.targets_from_config(e.predict)
  base = {'checkpoint': wd.config_hash(pre_report), 'model': e.model.to_dict(),
          'target': e.target.to_dict(), 'seed': e.seed}

  kernels, spectra = {}, {}
  for m in config.sizes:
    lin = compare.cached_kernel(os.path.join(workdir, f'kernel_M{m}.npz'),
                                wd.config_hash({**base, 'kernel': e.kernel.to_dict(), 'm': m}),
                                apply_fn, params, task.x_train[:m], task.x_test, e.kernel,
                                progress=progress)
    kernels[m] = lin
    # One eigendecomposition per M: the spectrum and the MSE residual energies serve the
    # plot and every MSE configuration.
    spectra[m] = subset.spectrum(lin.k_train_train, lin.fx_train_0, task.y_train[:m], 'mse')

  rows = []
  for loss in config.losses:
    cfg = copy.deepcopy(e)
    cfg.finetune.loss = loss
    for i, hp in enumerate(grid):
      name = f'{loss}_{compare.config_name(hp)}'
      order = sgd.batch_order(jax.random.fold_in(keys['order'], 0), n, hp.batch_size, hp.steps)
      run_hash = wd.config_hash({**base, 'hp': hp.to_dict(), 'loss': loss,
                                 'eval_every': ft.eval_every})
      real, curves = compare.real_run(apply_fn, params, task, hp, order, cfg,
                                      os.path.join(workdir, 'runs', name), run_hash, None, None,
                                      progress)
      t_real = None
      if np.all(np.isfinite(curves['train_loss'])):
        t_real = predict.t_eps(curves['steps'], curves['train_loss'], targets.eps)
      row = {'name': name, 'loss': loss, 'hparams': hp.to_dict(), 'real_t_eps': t_real,
             'real_train_seconds': real['train_seconds'], 'steps': curves['steps'],
             'real_train_loss': curves['train_loss'], 'by_size': []}
      for m in config.sizes:
        lin = kernels[m]
        t0 = time.perf_counter()
        [rep] = predict.predict(lin, task.y_train[:m], task.y_test, [hp],
                                key=jax.random.fold_in(keys['sde'], i), method='sde',
                                loss=loss, eval_every=ft.eval_every, targets=targets,
                                num_paths=e.predict.num_paths, dt=e.predict.dt, population=n)
        entry = {'m': m, 'kernel_seconds': lin.seconds,
                 'replica_t_eps': None if rep['diverged'] else rep['times']['t_eps']['mean_curve'],
                 'replica_seconds': time.perf_counter() - t0,
                 'replica_train_loss': None if rep['diverged'] else
                 rep['curves']['train_loss']['mean']}
        if loss == 'mse' and not hp.weight_decay:
          t0 = time.perf_counter()
          ex = subset.extrapolate(*spectra[m], m, n)
          steps, curve = subset.simulate_modes(ex['lam'], ex['energy'], hp, n=n,
                                               num_classes=num_classes, eval_every=ft.eval_every)
          entry.update(spectral_t_eps=predict.t_eps(steps, curve, targets.eps),
                       spectral_seconds=time.perf_counter() - t0, spectral_train_loss=curve,
                       alpha=ex['alpha'], beta=ex['beta'])
        for method in ('replica', 'spectral'):
          if f'{method}_t_eps' in entry:
            entry[f'{method}_error'] = predict.relative_error(entry[f'{method}_t_eps'], t_real)
            cost = entry['kernel_seconds'] + entry[f'{method}_seconds']
            entry[f'{method}_cost_ratio'] = real['train_seconds'] / cost
        row['by_size'].append(entry)
      rows.append(row)

  summary = {'config': config.to_dict(), 'n_train': n, 'num_classes': num_classes,
             'spectra': {str(m): spectra[m][0] for m in config.sizes}, 'rows': rows}
  wd.write_json(os.path.join(workdir, 'summary.json'), summary)
  summary = wd.read_json(os.path.join(workdir, 'summary.json'))
  table = ['| run | M | replica T_eps (error) | spectral T_eps (error) | real T_eps | '
           'cost saved (replica) |', '|---|---|---|---|---|---|']
  for r in summary['rows']:
    for x in r['by_size']:
      pct = lambda v: '-' if v is None else f'{100 * v:.0f}%'  # noqa: E731
      spectral = (f"{x['spectral_t_eps']} ({pct(x['spectral_error'])})"
                  if 'spectral_t_eps' in x else '-')
      table.append(f"| {r['name']} | {x['m']} | {x['replica_t_eps']} "
                   f"({pct(x['replica_error'])}) | {spectral} | {r['real_t_eps']} | "
                   f"{x['replica_cost_ratio']:.1f}x |")
  figure = plots.subset(summary, os.path.join(workdir, 'subset.png'))
  numbers = {'figure': figure, 'table': table,
             'errors': [{'run': r['name'], 'm': x['m'], 'replica': x['replica_error'],
                         'spectral': x.get('spectral_error')}
                        for r in summary['rows'] for x in r['by_size']]}
  figures.write(workdir, config, numbers)
  return numbers


if __name__ == '__main__':
  figures.cli(run, 'ntk_time/configs/subset.py')
