"""Figures from summaries (summary.Summary, read from a workdir): they read, never recompute."""

import math
import os

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  pylint: disable=g-import-not-at-top
import numpy as np  # noqa: E402  pylint: disable=g-import-not-at-top

from ntk_time import summary as summary_lib  # noqa: E402  pylint: disable=g-import-not-at-top

COLORS = {'sde': 'tab:blue', 'replay': 'tab:orange', 'head_aware': 'tab:red',
          'head_scaled': 'tab:pink', 'head_exact': 'tab:brown', 'full_batch': 'tab:green',
          'nt_gradient_descent': 'tab:purple'}
MARKERS = {'sde': 'o', 'replay': 's', 'head_aware': '^', 'head_scaled': 'X', 'head_exact': 'P',
           'full_batch': 'D', 'nt_gradient_descent': 'v'}
TASK_COLORS = ('tab:blue', 'tab:red', 'tab:green', 'tab:purple', 'tab:brown', 'tab:olive')
Summary = summary_lib.Summary


def _label(hp):
  s = f"lr={hp['lr']:g} B={hp['batch_size']} m={hp['momentum']:g}"
  return s + (f" wd={hp['weight_decay']:g}" if hp['weight_decay'] else '')


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _panel(ax, row: summary_lib.ConfigResult, curve: str, methods: list[str], band: str | None,
           fontsize: int = 7) -> None:
  """One configuration's real runs (black, each seed drawn up to a divergence,
  marked ×) and the predictions of `methods`, `band`'s with its 5–95% band; the
  methods that predict divergence are listed once. The y range is the real
  data's (and the finite predictions')."""
  steps = np.asarray(row.steps)
  ys = []
  for s, (real, stop) in enumerate(zip(row.real.curves[curve], row.real.diverged_at)):
    real = np.asarray(real, float)
    ok = np.isfinite(real)
    ax.plot(steps[ok], real[ok], color='k', lw=1.2, alpha=0.8, label='real' if s == 0 else None)
    ys += list(real[ok])
    if stop is not None and ok.any():
      last = np.flatnonzero(ok)[-1]
      ax.plot(steps[last], real[last], 'kx', ms=7, mew=2,
              label=f'real diverges (step {stop})')
  diverging = []
  for m in methods:
    pred = row.predicted.get(m)
    if pred is None:
      continue
    if pred.diverged:
      diverging.append(m)
      continue
    c = pred.curves[curve]
    ax.plot(steps, c.mean, color=COLORS.get(m), lw=1.1, label=m)
    ys += list(np.asarray(c.mean)[np.isfinite(c.mean)])
    if m == band:
      ax.fill_between(steps, c.q05, c.q95, color=COLORS.get(m), alpha=0.25, lw=0)
  if diverging:
    ax.text(0.98, 0.97, 'predicted to diverge:\n' + '\n'.join(diverging), transform=ax.transAxes,
            ha='right', va='top', fontsize=fontsize - 1,
            bbox=dict(facecolor='white', alpha=0.8, lw=0.5))
  if 'loss' in curve:
    ax.set_yscale('log')
  ys = [y for y in ys if y > 0 or 'loss' not in curve]
  if ys:
    lo, hi = min(ys), max(ys)
    if 'loss' in curve:
      ax.set_ylim(lo / 1.3, hi * 1.3)
    else:
      pad = 0.05 * max(hi - lo, 1e-3)
      ax.set_ylim(lo - pad, hi + pad)
  ax.tick_params(labelsize=fontsize - 1)


def loss_curves(summary: Summary, path: str, curve: str = 'train_loss') -> str:
  """One panel per configuration: real runs (black) vs every method's mean
  prediction, the headline method with its 5–95% band."""
  rows = summary.configs
  cols = min(4, len(rows))
  nrows = math.ceil(len(rows) / cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.8 * nrows), squeeze=False)
  for ax, row in zip(axes.flat, rows):
    _panel(ax, row, curve, summary.methods, summary.methods[0], fontsize=8)
    ax.set_title(_label(row.hparams), fontsize=8)
    ax.set_xlabel('SGD step', fontsize=8)
  for ax in list(axes.flat)[len(rows):]:
    ax.axis('off')
  handles = {}
  for ax in axes.flat:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(lab.split(' (step')[0], h)
  fig.legend(list(handles.values()), list(handles), fontsize=7, loc='lower center',
             ncol=len(handles), bbox_to_anchor=(0.5, 0.0))
  fig.suptitle(f'{curve.replace("_", " ")}: real vs predicted', fontsize=10)
  fig.tight_layout(rect=(0, 0.05, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def _predicted_vs_real_axes(ax, vals: list, definition: str) -> None:
  """Log axes over `vals` (training times in steps), the diagonal and the ±20% band."""
  if vals:
    lo = max(min(vals) * 0.7, 1)
    hi = max(max(vals) * 1.4, 10 * lo)
    grid = np.geomspace(lo, hi, 50)
    ax.plot(grid, grid, 'k-', lw=0.8)
    ax.fill_between(grid, 0.8 * grid, 1.2 * grid, color='gray', alpha=0.2, label='±20%')
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
  ax.set_xscale('log')
  ax.set_yscale('log')
  for axis in (ax.xaxis, ax.yaxis):  # labelled minor ticks collide on a short log range
    axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel(f'real {definition} (SGD steps)')
  ax.set_ylabel(f'predicted {definition} (SGD steps)')


def _time(pred: summary_lib.Prediction, definition: str = 't_eps'):
  return None if pred.diverged else pred.times[definition].value


def training_times(summary: Summary, path: str, definition: str = 't_eps') -> str:
  """Predicted vs real training time, log axes, with the ±20% band and 5–95% bars."""
  fig, ax = plt.subplots(figsize=(4.6, 4.2))
  vals = []
  for method in summary.methods:
    xs, ys, lo, hi = [], [], [], []
    for row in summary.configs:
      real, t = row.real.times[definition].value, _time(row.predicted[method], definition)
      if not real or not t:  # log axes: 0 or never cannot be drawn
        continue
      pt = row.predicted[method].times[definition]
      xs.append(real)
      ys.append(t)
      lo.append(pt.q05 if pt.q05 is not None else t)
      hi.append(pt.q95 if pt.q95 is not None else t)
    if xs:
      ys_a = np.asarray(ys, float)
      err = np.clip([ys_a - np.asarray(lo, float), np.asarray(hi, float) - ys_a], 0, None)
      ax.errorbar(xs, ys, yerr=err, fmt='o', ms=4, color=COLORS.get(method), label=method,
                  capsize=2)
      vals += xs + ys
  _predicted_vs_real_axes(ax, vals, definition)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=8)
  return _save(fig, path)


def costs(summary: Summary, path: str) -> str:
  """Seconds to predict the whole grid vs to fine-tune it."""
  c = summary.costs
  fig, ax = plt.subplots(figsize=(5.2, 3.0))
  first = summary.methods[0]
  parts = [('kernel', c['kernel_seconds']), (f'{first} simulations', c[f'{first}_seconds']),
           ('step timing', c['step_timing_seconds'])]
  if c.get('probe_seconds'):  # in both bars: either side starts from the probe's head
    parts.append(('linear probe', c['probe_seconds']))
  left = 0.0
  for name, v in parts:
    ax.barh(1, v, left=left, label=name)
    left += v
  ax.barh(0, c['train_seconds'], color='k', label='real fine-tuning (training steps)')
  ax.set_yticks([0, 1], ['train grid', 'predict grid'])
  ax.set_xlabel('seconds')
  ax.set_title(f"prediction is {c['ratio']:.1f}× cheaper than training "
               f"({len(summary.configs)} configurations)", fontsize=9)
  ax.legend(fontsize=7, loc='lower right')
  return _save(fig, path)


def error_vs_drift(summary: Summary, path: str) -> str:
  """Each configuration's error against its real kernel drift ‖Θ(w_T) − Θ(w0)‖/‖Θ(w0)‖:
  the curve error max_t |log L̂_t − log L_t| and the loss-level times' relative
  errors, every method (the headline filled); infinite or missing errors and
  runs without a drift are left out (log axes)."""
  fig, (ax_c, ax_l) = plt.subplots(1, 2, figsize=(8.4, 3.6), sharex=True)
  levels = [d for d in summary.definitions if d.startswith('t_loss_')]
  drawn = {ax_c: [], ax_l: []}
  for j, m in enumerate(summary.methods):
    style = dict(marker=MARKERS.get(m, 'o'), edgecolors=COLORS.get(m), s=30,
                 facecolors=COLORS.get(m) if j == 0 else 'none')
    for ax, names in ((ax_c, ['curve_log_error']), (ax_l, levels)):
      pts = [(r.real.kernel_drift, r.errors[m][d].value) for r in summary.configs for d in names]
      pts = [(x, y) for x, y in pts
             if x is not None and y is not None and np.isfinite(y) and x > 0 and y > 0]
      if pts:
        ax.scatter(*zip(*pts), label=m, **style)
        drawn[ax] += pts
  ax_c.set_ylabel('curve error max |log L̂ − log L|')
  ax_l.set_ylabel('loss-level time error |T̂ − T|/T\n(' + ', '.join(levels) + ')')
  ax_l.axhline(0.2, color='gray', lw=0.8, ls='--')
  def decade(vals, set_lim):
    # At least a decade, so that a major tick is labelled (minor labels collide).
    if vals:
      mid = np.sqrt(min(vals) * max(vals))
      half = max(1.3 * np.sqrt(max(vals) / min(vals)), np.sqrt(10))
      set_lim(mid / half, mid * half)

  for ax in (ax_c, ax_l):
    ax.set_xscale('log')
    ax.set_yscale('log')
    decade([x for pts in drawn.values() for x, _ in pts], ax.set_xlim)
    decade([y for _, y in drawn[ax]], ax.set_ylim)
    for axis in (ax.xaxis, ax.yaxis):
      axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel('kernel drift ‖Θ(w_T) − Θ(w0)‖/‖Θ(w0)‖')
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=7)
  fig.suptitle(f"error against kernel drift (head: {summary.head.get('head_init', 'random')}; "
               f'{summary.methods[0]} filled)', fontsize=9)
  return _save(fig, path)


def all_figures(summary: Summary, workdir: str) -> list[str]:
  return [loss_curves(summary, os.path.join(workdir, 'loss_curves.png')),
          training_times(summary, os.path.join(workdir, 'training_times.png')),
          costs(summary, os.path.join(workdir, 'costs.png')),
          error_vs_drift(summary, os.path.join(workdir, 'error_vs_drift.png'))]


# Figures across several summaries (the experiments/fig_*.py scripts).


def curves_grid(summaries: dict[str, Summary], show: list[int], path: str) -> str:
  """Rows: each task's training loss and accuracy; columns: the grid points `show`.

  Real runs in black (one line per seed); each method's mean, with the 5–95%
  band of the first method (the SDE's paths).
  """
  names = list(summaries)
  fig, axes = plt.subplots(2 * len(names), len(show), squeeze=False,
                           figsize=(3.2 * len(show), 2.3 * 2 * len(names)))
  for t, name in enumerate(names):
    s = summaries[name]
    for col, i in enumerate(show):
      row = s.configs[i]
      for k, curve in enumerate(('train_loss', 'train_acc')):
        ax = axes[2 * t + k, col]
        _panel(ax, row, curve, s.methods, s.methods[0])
        if curve == 'train_loss':
          ax.set_title(f'{name}: {_label(row.hparams)}', fontsize=7)
        ax.set_ylabel(curve.replace('_', ' '), fontsize=7)
  axes[0, 0].legend(fontsize=6)
  axes[-1, 0].set_xlabel('SGD step', fontsize=7)
  return _save(fig, path)


def times_by_task(summaries: dict[str, Summary], path: str, definition: str = 't_eps') -> str:
  """Predicted vs real training time, one colour per task, one marker per method, ±20%."""
  fig, ax = plt.subplots(figsize=(5.0, 4.6))
  vals = []
  for color, (name, s) in zip(TASK_COLORS * 10, summaries.items()):
    for j, m in enumerate(s.methods):
      pts = [(row.real.times[definition].value, _time(row.predicted[m], definition))
             for row in s.configs]
      pts = [(x, y) for x, y in pts if x and y]  # log axes: 0 or never cannot be drawn
      if not pts:
        continue
      xs, ys = zip(*pts)
      ax.scatter(xs, ys, marker=MARKERS.get(m, 'o'), s=28, label=f'{name} ({m})',
                 facecolors=color if j == 0 else 'none', edgecolors=color)
      vals += xs + ys
  _predicted_vs_real_axes(ax, vals, definition)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, loc='upper left')
  return _save(fig, path)


def effective_lr(summary: Summary, path: str) -> str:
  """T_eps against η̃ = η/(1−m): real (black) and the first method, one marker per momentum."""
  first = summary.methods[0]
  fig, ax = plt.subplots(figsize=(5.0, 3.8))
  momenta = sorted({row.hparams['momentum'] for row in summary.configs})
  markers = ('o', 's', '^', 'D', 'v')
  nan = lambda v: np.nan if v is None else v
  for k, m in enumerate(momenta):
    rows = [r for r in summary.configs if r.hparams['momentum'] == m]
    eff = [r.hparams['lr'] / (1 - m) for r in rows]
    mk = markers[k % len(markers)]
    ax.scatter(eff, [nan(r.real.times['t_eps'].value) for r in rows], marker=mk, color='k',
               label=f'real, m={m:g}')
    ax.scatter(eff, [nan(_time(r.predicted[first])) for r in rows], marker=mk, facecolors='none',
               edgecolors=COLORS.get(first), s=60, label=f'{first}, m={m:g}')
  ax.set_xscale('log')
  ax.set_xlabel('effective learning rate η/(1−m)')
  ax.set_ylabel('T_eps (SGD steps)')
  ax.legend(fontsize=6)
  return _save(fig, path)


def batch_size(summary: Summary, path: str) -> str:
  """T_eps and its error against the batch size: real, and every method (SDE vs ODE)."""
  rows = sorted(summary.configs, key=lambda r: r.hparams['batch_size'])
  b = [r.hparams['batch_size'] for r in rows]
  nan = lambda v: np.nan if v is None else v
  fig, (ax, ax_err) = plt.subplots(1, 2, figsize=(8.4, 3.4))
  ax.plot(b, [nan(r.real.times['t_eps'].value) for r in rows], 'k-o', label='real')
  for m in summary.methods:
    ax.plot(b, [nan(_time(r.predicted[m])) for r in rows], '-' + MARKERS.get(m, 'o'),
            color=COLORS.get(m), label=m)
    err = [r.errors[m]['t_eps'].value for r in rows]
    ax_err.plot(b, [np.nan if v is None else 100 * v for v in err], '-' + MARKERS.get(m, 'o'),
                color=COLORS.get(m), label=m)
  for a in (ax, ax_err):
    a.set_xscale('log')
    a.set_xlabel('batch size B')
    a.legend(fontsize=7)
  ax.set_ylabel('T_eps (SGD steps)')
  ax_err.set_ylabel('|T̂ − T| / T (%)')
  ax_err.axhline(20, color='gray', lw=0.8, ls='--')
  return _save(fig, path)


def subset(summary: dict, path: str) -> str:
  """Predicted T_eps against the subset size M (real T_eps on all N as a line), and λ_k/M."""
  fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(9.4, 3.6))
  for color, r in zip(TASK_COLORS * 10, summary['rows']):
    ms = [x['m'] for x in r['by_size']]
    for method, ls in (('replica', '-o'), ('spectral', '--s')):
      t = [x.get(f'{method}_t_eps') for x in r['by_size']]
      if any(v is not None for v in t):
        ax.plot(ms, [np.nan if v is None else v for v in t], ls, color=color, ms=4,
                label=f"{r['name']} ({method})")
    if r['real_t_eps'] is not None:
      ax.axhline(r['real_t_eps'], color=color, lw=0.8, ls=':')
  ax.set_xscale('log')
  ax.set_xlabel(f"subset size M (real runs on N = {summary['n_train']}, dotted)")
  ax.set_ylabel('T_eps (SGD steps)')
  ax.legend(fontsize=5)
  for m, lam in summary['spectra'].items():
    lam = np.asarray(lam, float)
    k = np.arange(1, len(lam) + 1)
    ax_s.loglog(k, np.where(lam > 0, lam / int(m), np.nan), lw=1, label=f'M = {m}')
  ax_s.set_xlabel('mode k')
  ax_s.set_ylabel('λ_k / M')
  if summary['spectra']:  # computed for the squared loss only (pipeline.run_subset)
    ax_s.legend(fontsize=7)
  return _save(fig, path)
