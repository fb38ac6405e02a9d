r"""Pretrains the source model and checkpoints it.

  python -m experiments.pretrain --config ntk_time/configs/default.py --workdir workdirs/pretrain

Writes <workdir>/checkpoint.msgpack and pretrain.json; rerunning resumes an
interrupted run and returns at once when the checkpoint exists.
"""

import os

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from ntk_time import data
from ntk_time import models
from ntk_time import pretrain
from ntk_time import workdir as wd

_CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)


def run(config, workdir: str, progress: bool = True) -> dict:
  """Pretrains unless `workdir/checkpoint.msgpack` exists; returns its report."""
  done = os.path.join(workdir, 'pretrain.json')
  meta = {'model': config.model.to_dict(), 'source': config.source.to_dict(),
          'pretrain': config.pretrain.to_dict(), 'seed': config.seed}
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path) and wd.config_hash(wd.read_json(config_path)) != wd.config_hash(meta):
    raise ValueError(f'{workdir} holds a pretraining run of another config; use another workdir')
  if os.path.exists(done) and os.path.exists(os.path.join(workdir, 'checkpoint.msgpack')):
    return wd.read_json(done)
  task = data.task_from_config(config.source)
  model = models.model_from_config(config.model, task.num_classes)
  wd.write_json(config_path, meta)
  p = config.pretrain
  return pretrain.pretrain(model, task, key=jax.random.key(config.seed), epochs=p.epochs,
                           batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                           workdir=workdir, meta=meta, progress=progress)


def main(_):
  report = run(_CONFIG.value, _WORKDIR.value)
  print(f"source accuracy: train {report['train_acc']:.3f}, test {report['test_acc']:.3f} "
        f"({report['epochs']} epochs, {report['seconds']:.0f} s); "
        f"checkpoint: {os.path.join(_WORKDIR.value, 'checkpoint.msgpack')}")


if __name__ == '__main__':
  app.run(main)
