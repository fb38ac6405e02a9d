r"""Predicted vs real fine-tuning over a hyper-parameter grid: the main job.

  python -m experiments.compare --config ntk_time/configs/default.py --workdir workdirs/default

Computes the kernel once, predicts every configuration with each of
`predict.methods` and with the baselines, fine-tunes every configuration for
real with the same batch orders, and writes summary.json, summary.csv and three
PNG figures to the workdir (ntk_time.pipeline.run); prints the table.

A workdir belongs to one config: a rerun skips every finished stage and resumes
an interrupted real run; a workdir of another config is refused unless
--overwrite is given, which deletes it first.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import pipeline


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  summary = pipeline.run(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  print(pipeline.format_table(summary))
  print('\nwrote', os.path.join(_WORKDIR.value, 'summary.json'), 'and summary.csv')
  for f in ('loss_curves.png', 'training_times.png', 'costs.png', 'error_vs_drift.png'):
    print('figure:', os.path.join(_WORKDIR.value, f))


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  _OVERWRITE = flags.DEFINE_bool('overwrite', False,
                                 'delete a workdir made with another config instead of refusing')
  app.run(main)
