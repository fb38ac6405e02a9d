r"""Figure 3: the same effective learning rate η/(1−m), about the same training time.

  python -m experiments.fig_effective_lr --config=ntk_time/configs/fig_effective_lr.py \
      --workdir=workdirs/effective_lr

Groups the grid by η̃ = η/(1−m) and reports, for each group of two or more
configurations, the spread (max − min)/mean of T_eps, real and predicted, beside
the range of T_eps over the whole grid. Writes effective_lr.png and figure.json.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from ntk_time import pipeline
from ntk_time import plots


def _spread(vals):
  if any(v is None for v in vals) or not np.mean(vals):
    return None
  return float((max(vals) - min(vals)) / np.mean(vals))


def run(config, workdir: str, progress: bool = True) -> dict:
  [(name, s)] = pipeline.run_many(config.experiments, workdir, progress).items()
  first = s.methods[0]
  groups = {}
  for r in s.configs:
    eff = round(r.hparams['lr'] / (1 - r.hparams['momentum']), 10)
    pred = r.predicted[first]
    groups.setdefault(eff, []).append({
        'name': r.name, 'real': r.real.times['t_eps'].value,
        'predicted': None if pred.diverged else pred.times['t_eps'].value})
  out, table = [], [f'| η/(1−m) | configurations | real T_eps | {first} T_eps | real spread | '
                    f'{first} spread |', '|---|---|---|---|---|---|']
  for eff, members in sorted(groups.items()):
    if len(members) < 2:
      continue
    real, pred = [m['real'] for m in members], [m['predicted'] for m in members]
    g = {'effective_lr': eff, 'members': members, 'real_spread': _spread(real),
         'predicted_spread': _spread(pred)}
    out.append(g)
    fmt = lambda v: '-' if v is None else f'{100 * v:.0f}%'  # noqa: E731
    table.append(f"| {eff:g} | {', '.join(m['name'] for m in members)} | {real} | {pred} | "
                 f"{fmt(g['real_spread'])} | {fmt(g['predicted_spread'])} |")
  all_real = [r.real.times['t_eps'].value for r in s.configs]
  all_real = [v for v in all_real if v is not None]
  grid_range = float(max(all_real) / min(all_real)) if all_real and min(all_real) > 0 else None
  table.append(f'T_eps over the whole grid: {min(all_real)}–{max(all_real)} steps '
               f'(max/min {grid_range:.3g})' if grid_range else 'T_eps over the grid: -')
  figure = plots.effective_lr(s, os.path.join(workdir, 'effective_lr.png'))
  numbers = {'figure': figure, 'table': table, 'groups': out, 'grid_range': grid_range,
             'experiment': name}
  pipeline.write_figure(workdir, config, numbers)
  return numbers



def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  numbers = run(_CONFIG.value, _WORKDIR.value)
  print('\n'.join(numbers['table']))
  print('figure:', numbers['figure'])


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/fig_effective_lr.py', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
