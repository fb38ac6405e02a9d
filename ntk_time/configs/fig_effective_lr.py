r"""Figure 3: configurations with the same effective learning rate η/(1−m) train alike.

  python -m experiments.fig_effective_lr --config=ntk_time/configs/fig_effective_lr.py \
      --workdir=workdirs/effective_lr

Fashion-MNIST 5–9 at N = 500, 28×28 (the previous demo target),
lr ∈ {0.001, 0.002, 0.01} × m ∈ {0, 0.5, 0.9} at B = 25:
three pairs share η/(1−m) (0.002, 0.01, 0.02). About 10 minutes on 2 CPU cores.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import smoke


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg == 'smoke':
    e = smoke.get_config()
    e.finetune.update(lr=(0.02, 0.05), momentum=(0.0, 0.6), batch_size=(6,))
  else:
    e = default.get_config()
    # The figure's own target (the demo's before it moved to N = 200 at 14×14).
    e.target.update(n_train=500, image_size=0)
    e.finetune.update(lr=(0.001, 0.002, 0.01), momentum=(0.0, 0.5, 0.9), batch_size=(25,),
                      steps=800, checkpoint_every=200)
  c = mlc.ConfigDict()
  c.experiments = mlc.ConfigDict({'effective_lr': e})
  return c
