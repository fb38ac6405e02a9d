r"""Figure 4: SDE vs ODE (full-batch) prediction as the batch size shrinks.

  python -m experiments.fig_batch_size --config=ntk_time/configs/fig_batch_size.py \
      --workdir=workdirs/batch_size

Writes batch_size.png (T_eps and its error against B, per method) and figure.json.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import pipeline
from ntk_time import plots


def run(config, workdir: str, progress: bool = True) -> dict:
  [(name, s)] = pipeline.run_many(config.experiments, workdir, progress).items()
  rows = sorted(s.configs, key=lambda r: r.hparams['batch_size'])
  points, table = [], []
  for r in rows:
    p = {'batch_size': r.hparams['batch_size'], 'real_t_eps': r.real.times['t_eps'].value,
         **{f'{m}_t_eps': None if r.predicted[m].diverged else r.predicted[m].times['t_eps'].value
            for m in s.methods},
         **{f'{m}_error': r.errors[m]['t_eps'].value for m in s.methods}}
    points.append(p)
    table.append(', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                           for k, v in p.items()))
  figure = plots.batch_size(s, os.path.join(workdir, 'batch_size.png'))
  numbers = {'figure': figure, 'table': table, 'points': points, 'experiment': name}
  pipeline.write_figure(workdir, config, numbers)
  return numbers


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  numbers = run(_CONFIG.value, _WORKDIR.value)
  print('\n'.join(numbers['table']))
  print('figure:', numbers['figure'])


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/fig_batch_size.py', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
