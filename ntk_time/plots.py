"""Figures from a compare workdir's summary.json: they read files, never recompute."""

import math
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

COLORS = {'sde': 'tab:blue', 'replay': 'tab:orange', 'head_aware': 'tab:red', 'full_batch': 'tab:green'}


def _label(hp):
  s = f"lr={hp['lr']:g} B={hp['batch_size']} m={hp['momentum']:g}"
  return s + (f" wd={hp['weight_decay']:g}" if hp['weight_decay'] else '')


def loss_curves(summary: dict, path: str, curve: str = 'train_loss') -> str:
  """One panel per configuration: real runs (black) vs predictions with 5–95% bands."""
  rows = summary['configs']
  cols = min(4, len(rows))
  nrows = math.ceil(len(rows) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False,
                           sharex=False)
  for ax, row in zip(axes.flat, rows):
    steps = np.asarray(row['steps'])
    for s, real in enumerate(row['real']['curves'][curve]):
      ax.plot(steps, real, color='k', lw=1.2, alpha=0.8, label='real' if s == 0 else None)
    for method, pred in row['predicted'].items():
      if pred['diverged']:
        ax.text(0.5, 0.5, f'{method}: diverges', transform=ax.transAxes, ha='center')
        continue
      c = pred['curves'][curve]
      ax.plot(steps, c['mean'], color=COLORS.get(method), lw=1.2, label=method)
      ax.fill_between(steps, c['q05'], c['q95'], color=COLORS.get(method), alpha=0.25, lw=0)
    if 'loss' in curve:
      ax.set_yscale('log')
    ax.set_title(_label(row['hparams']), fontsize=8)
    ax.set_xlabel('SGD step', fontsize=8)
    ax.tick_params(labelsize=7)
  for ax in list(axes.flat)[len(rows):]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=7)
  fig.suptitle(f'{curve.replace("_", " ")}: real vs predicted', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def training_times(summary: dict, path: str, definition: str = 't_eps') -> str:
  """Predicted vs real training time, log axes, with the ±20% band."""
  fig, ax = plt.subplots(figsize=(4.6, 4.2))
  vals = []
  for method in summary['methods']:
    xs, ys, lo, hi = [], [], [], []
    for row in summary['configs']:
      real = row['real']['times'][definition]['mean']
      pred = row['predicted'][method]
      if real is None or pred['diverged'] or pred['times'][definition]['mean_curve'] is None:
        continue
      t = pred['times'][definition]
      xs.append(real)
      ys.append(t['mean_curve'])
      lo.append(t['q05'] if t['q05'] is not None else t['mean_curve'])
      hi.append(t['q95'] if t['q95'] is not None else t['mean_curve'])
    if xs:
      ys_a = np.asarray(ys, float)
      err = np.clip([ys_a - np.asarray(lo, float), np.asarray(hi, float) - ys_a], 0, None)
      ax.errorbar(xs, ys, yerr=err, fmt='o', ms=4, color=COLORS.get(method), label=method,
                  capsize=2)
      vals += xs + ys
  if vals:
    lo_v = max(min(vals) * 0.7, 1)
    hi_v = max(max(vals) * 1.4, 10 * lo_v)
    grid = np.geomspace(lo_v, hi_v, 50)
    ax.plot(grid, grid, 'k-', lw=0.8)
    ax.fill_between(grid, 0.8 * grid, 1.2 * grid, color='gray', alpha=0.2, label='±20%')
    ax.set_xlim(lo_v, hi_v)
    ax.set_ylim(lo_v, hi_v)
  ax.set_xscale('log')
  ax.set_yscale('log')
  for axis in (ax.xaxis, ax.yaxis):  # labelled minor ticks collide on a short log range
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel(f'real {definition} (SGD steps)')
  ax.set_ylabel(f'predicted {definition} (SGD steps)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def costs(summary: dict, path: str) -> str:
  """Seconds to predict the whole grid vs to fine-tune it."""
  c = summary['costs']
  fig, ax = plt.subplots(figsize=(5.2, 3.0))
  parts = [('kernel', c['kernel_seconds']), ('SDE simulations', c['sde_seconds']),
           ('step timing', c['step_timing_seconds'])]
  left = 0.0
  for name, v in parts:
    ax.barh(1, v, left=left, label=name)
    left += v
  ax.barh(0, c['train_seconds'], color='k', label='real fine-tuning (training steps)')
  ax.set_yticks([0, 1], ['train grid', 'predict grid'])
  ax.set_xlabel('seconds')
  ax.set_title(f"prediction is {c['ratio']:.1f}× cheaper than training "
               f"({len(summary['configs'])} configurations)", fontsize=9)
  ax.legend(fontsize=7, loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def all_figures(summary: dict, workdir: str) -> list[str]:
  return [loss_curves(summary, os.path.join(workdir, 'loss_curves.png')),
          training_times(summary, os.path.join(workdir, 'training_times.png')),
          costs(summary, os.path.join(workdir, 'costs.png'))]
