r"""One real fine-tuning run: the first point of the config's grid (or --index).

  python -m experiments.finetune --config ntk_time/configs/default.py --workdir workdirs/finetune \
      --config.finetune.lr='(0.01,)' --config.finetune.momentum='(0.9,)'

Pretrains (or reuses) the source model, replaces the head, fine-tunes with the
batch order of seed --seed, and writes metrics.jsonl, curves.npz (with the
order) and run.json to <workdir>/run.
"""

import os

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ntk_time import checks
from ntk_time import finetune
from ntk_time import models
from ntk_time import sgd


def run(config, workdir: str, index: int = 0, seed: int = 0, progress: bool = True) -> dict:
  ft = config.finetune
  grid = checks.check(config)
  if not 0 <= index < len(grid):
    raise ValueError(f'--index={index} is outside the grid of {len(grid)} configurations')
  hp = grid[index]
  keys = sgd.run_keys(config.seed)  # the keys compare.py uses, so the runs are the same
  task, model, variables, _, _, _ = finetune.target_from_config(config, workdir, keys['head'],
                                                                progress)
  order = sgd.batch_order(jax.random.fold_in(keys['order'], seed), len(task.x_train),
                          hp.batch_size, hp.steps, ft.sampling)
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  return finetune.finetune(apply_fn, variables['params'], task, hp, order, loss=ft.loss,
                           eval_every=ft.eval_every, workdir=os.path.join(workdir, 'run'),
                           checkpoint_every=ft.checkpoint_every, progress=progress)


def main(_):
  logging.set_verbosity(logging.WARNING)
  result = run(_CONFIG.value, _WORKDIR.value, _INDEX.value, _SEED.value)
  c = result['curves']
  print(f'train loss {c.train_loss[0]:.3f} -> {c.train_loss[-1]:.3f}, accuracy '
        f'{c.train_acc[0]:.3f} -> {c.train_acc[-1]:.3f} in {c.steps[-1]} steps; '
        f"{result['seconds_per_step'] * 1e3:.1f} ms per step")
  print('curves:', os.path.join(_WORKDIR.value, 'run', 'curves.npz'), 'and metrics.jsonl')


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  _INDEX = flags.DEFINE_integer('index', 0, 'which point of the grid (product order)')
  _SEED = flags.DEFINE_integer('seed', 0, 'batch-order seed, as compare.py numbers them')
  app.run(main)
