r"""Figure 1: real vs predicted loss and accuracy curves, several targets and configurations.

  python -m experiments.fig_curves --config=ntk_time/configs/fig_curves.py --workdir=workdirs/accuracy

Writes curves.png and figure.json (per panel: real and predicted T_eps, and the
curve error max_t |log L̂_t − log L_t|).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import pipeline
from ntk_time import plots


def run(config, workdir: str, progress: bool = True) -> dict:
  summaries = pipeline.run_many(config.experiments, workdir, progress)
  show = list(config.show)
  for name, s in summaries.items():
    if max(show) >= len(s.configs):
      raise ValueError(f'show={show} names a grid point that {name} (with '
                       f'{len(s.configs)} configurations) does not have')
  figure = plots.curves_grid(summaries, show, os.path.join(workdir, 'curves.png'))
  panels, table = [], []
  for name, s in summaries.items():
    for i in show:
      r = s.configs[i]
      panel = {'task': name, 'name': r.name, 'real_t_eps': r.real.times['t_eps'].value,
               **{f'{m}_t_eps': None if r.predicted[m].diverged else
                  r.predicted[m].times['t_eps'].value for m in s.methods},
               **{f'{m}_curve_log_error': r.errors[m]['curve_log_error'].value
                  for m in s.methods}}
      panels.append(panel)
      table.append(', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                             for k, v in panel.items()))
  numbers = {'figure': figure, 'table': table, 'panels': panels}
  pipeline.write_figure(workdir, config, numbers)
  return numbers


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  numbers = run(_CONFIG.value, _WORKDIR.value)
  print('\n'.join(numbers['table']))
  print('figure:', numbers['figure'])


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/fig_curves.py', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
