r"""Paper scale from a subset: the whole Fashion-MNIST 5–9 training set, predicted from M ≤ 1,000.

  python -m experiments.subset --config=ntk_time/configs/paper_scale.py \
      --workdir=workdirs/paper_scale          # or: make paper_scale

The demo's ResNet-8 (pretrained on Fashion-MNIST 0–4, 14×14 like the demo's
target) fine-tuned for real on all N = 30,000 training images of classes 5–9,
3 epochs per configuration, under both losses: 2 losses × 4 configurations = 8
real runs (lr 0.003 at m = 0 and 0.9, η/(1−m) = 0.003 and 0.03, inside and
above the linearised bound for the squared loss, × B = 50 and 200). Predicted
from kernels on the first M = 500 and 1,000 images (a uniformly random subset),
sparse-sign sketched (k = 4,096: the Jacobian pass, not the Gram product, is
then the kernel's cost), by the replica SDE in the low-rank basis that
predict.rank_tol picks and, for MSE, the spectral extrapolation
(pipeline.run_subset). The real runs are evaluated every 10 steps on a fixed,
seeded 500 of the 30,000 training images and 100 test images: evaluating all
30,000 would cost more than the training (evaluation is not counted in the
training seconds either way). `:smoke` runs in seconds on digits.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import smoke


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  if arg == 'smoke':
    e = smoke.get_config()
    e.target.update(n_train=60)
    e.finetune.update(lr=(0.05,), batch_size=(6, 12), momentum=(0.0, 0.9))
    e.predict.update(rank_tol=0.01)
    c.sizes = (12,)
    c.epochs = 2
    c.eval_samples = 20
  else:
    e = default.get_config()
    e.target.update(n_train=-1, n_test=100)
    e.finetune.update(lr=(0.003,), batch_size=(50, 200), momentum=(0.0, 0.9), eval_every=10)
    e.kernel.update(sketch_kind='sparse_sign', sketch_dim=4096)
    # The smallest rank whose bound on the training-loss error is 0.01 (a fifth of eps).
    e.predict.update(rank_tol=0.01)
    c.sizes = (500, 1000)
    c.epochs = 3
    c.eval_samples = 500
  c.experiment = e
  c.losses = ('cross_entropy', 'mse')
  return c
