r"""Figure 5 and the scale headline: predicting a large training set from a subset.

  python -m experiments.subset --config=ntk_time/configs/subset.py --workdir=workdirs/subset

The demo's ResNet-8 (pretrained on Fashion-MNIST 0–4) fine-tuned on N = 10,000
images of classes 5–9, for real, with both losses; predicted from kernels on
the first M ∈ {250, 500, 1000, 2000} of those images (a uniformly random subset:
the task's order is a seeded permutation). `:smoke` runs in seconds on digits.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import smoke


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  if arg == 'smoke':
    e = smoke.get_config()
    e.finetune.update(lr=(0.05,), batch_size=(6,), momentum=(0.9,))
    c.sizes = (6, 12)
  else:
    e = default.get_config()
    e.target.update(n_train=10_000, n_test=500, image_size=0)
    e.finetune.update(lr=(0.003,), batch_size=(25, 100), momentum=(0.9,))
    c.sizes = (250, 500, 1000, 2000)
  c.experiment = e
  # Real runs and predictions for each loss; the kernels are shared.
  c.losses = ('cross_entropy', 'mse')
  # > 0: each configuration's horizon is this many passes over the N samples (rounded up to
  # a multiple of finetune.eval_every) instead of finetune.steps.
  c.epochs = 0
  # > 0: the real runs' training loss is evaluated on this many of the N samples (a fixed
  # draw from experiment.seed, finetune.eval_subset) instead of all of them.
  c.eval_samples = 0
  return c
