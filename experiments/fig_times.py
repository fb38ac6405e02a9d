r"""Figure 2: predicted vs real T_eps over a grid on several targets, and the error table.

  python -m experiments.fig_times --config=ntk_time/configs/fig_times.py --workdir=workdirs/accuracy

Writes <workdir>/<task>/ (one compare workdir per target), training_times.png,
errors.md and figure.json.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import pipeline
from ntk_time import plots
from ntk_time import workdir as wd


def run(config, workdir: str, progress: bool = True) -> dict:
  summaries = pipeline.run_many(config.experiments, workdir, progress)
  table = pipeline.markdown_table(summaries)
  wd.write_bytes(os.path.join(workdir, 'errors.md'), ('\n'.join(table) + '\n').encode())
  figure = plots.times_by_task(summaries, os.path.join(workdir, 'training_times.png'))
  points = {name: [{'name': r.name, 'real': r.real.times['t_eps'].value,
                    **{p: r.errors[p]['t_eps'].value for p in s.predictors}}
                   for r in s.configs] for name, s in summaries.items()}
  numbers = {'figure': figure, 'table': table, 't_eps_errors': points}
  pipeline.write_figure(workdir, config, numbers)
  return numbers


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  numbers = run(_CONFIG.value, _WORKDIR.value)
  print('\n'.join(numbers['table']))
  print('figure:', numbers['figure'])


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/fig_times.py', lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
