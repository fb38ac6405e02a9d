r"""Predict the fine-tuning of N samples from kernels on M ≪ N of them, and check for real.

  python -m experiments.subset --config=ntk_time/configs/subset.py --workdir=workdirs/subset
  python -m experiments.subset --config=ntk_time/configs/paper_scale.py \
      --workdir=workdirs/paper_scale     # `make paper_scale`: all 30,000, 3 epochs each

For every M of `sizes`, the kernel of the first M training samples (cached in
kernel_M<M>.npz); for every loss and configuration, the real fine-tuning on all
N samples (runs/<loss>_<name>/) and two predictions of its T_eps and loss
levels (ntk_time/subset.py): `replica` (the SDE on the M samples standing for
the N, any loss; low-rank where predict.rank_tol is set) and `spectral` (the
extrapolated spectrum, MSE only), beside the best_constant and horizon_fraction
baselines. Prints per run its times and per predictor its errors and cost
ratio; writes summary.json, subset.png and figure.json
(ntk_time.pipeline.run_subset).
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ntk_time import pipeline


def main(_):
  logging.set_verbosity(logging.WARNING)  # JAX's backend probing is not news
  numbers = pipeline.run_subset(_CONFIG.value, _WORKDIR.value)
  print('\n'.join(numbers['table']))
  print('figure:', numbers['figure'])


if __name__ == '__main__':
  # Flags are defined only when run as a script, so that tests can import every experiment.
  _CONFIG = config_flags.DEFINE_config_file('config', 'ntk_time/configs/subset.py',
                                            lock_config=True)
  _WORKDIR = flags.DEFINE_string('workdir', None, 'output folder', required=True)
  app.run(main)
