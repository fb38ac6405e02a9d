r"""Pretrains the source model and checkpoints it.

  python -m experiments.pretrain --config ntk_time/configs/default.py --workdir workdirs/default/pretrain

Writes <workdir>/checkpoint.msgpack and pretrain.json; rerunning resumes an
interrupted run and returns at once when the checkpoint exists.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import checks
from ntk_time import pretrain


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  checks.check(_CONFIG.value)
  path, report = pretrain.from_config(_CONFIG.value, _WORKDIR.value)
  print(f"source accuracy: train {report['train_acc']:.3f}, test {report['test_acc']:.3f} "
        f"({report['epochs']} epochs, {report['seconds']:.0f} s of training); checkpoint: {path}")


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/default.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
