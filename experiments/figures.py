"""What the figure scripts (experiments/fig_*.py) share.

A figure config holds `experiments`, named compare configs; each runs into
<workdir>/<name> with every stage reused on a rerun, and experiments with the
same source model share the first one's pretraining. The figure script then
plots from the summaries and writes figure.json (its numbers) beside the PNG.
"""

import copy
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import compare
from ntk_time import workdir as wd


def run_experiments(experiments, workdir: str, progress: bool = True) -> dict[str, dict]:
  """compare.run for each named config of `experiments`: {name: summary}."""
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
    summaries[name] = compare.run(cfg, os.path.join(workdir, name), progress=progress)
  return summaries


def write(workdir: str, config, numbers: dict) -> str:
  path = os.path.join(workdir, 'figure.json')
  wd.write_json(path, {'config': config.to_dict(), **numbers})
  return path


def cli(run, default_config: str) -> None:
  """Runs `run(config, workdir) -> numbers` as a script with --config and --workdir."""
  config = config_flags.DEFINE_config_file('config', default_config, lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, 'output folder', required=True)

  def main(_):
    logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
    numbers = run(config.value, workdir.value)
    print('\n'.join(numbers['table']))
    print('figure:', numbers['figure'])
  app.run(main)
