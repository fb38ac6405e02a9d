r"""Figure 4: what the SDE's noise term buys as the batch shrinks (SDE vs the full-batch ODE).

  python -m experiments.fig_batch_size --config=ntk_time/configs/fig_batch_size.py \
      --workdir=workdirs/batch_size

Fashion-MNIST 5–9 at N = 500, 28×28 (the previous demo target), lr = 0.01, m = 0,
B ∈ {10, 25, 50, 100, 250, 500} (B = N
is full-batch gradient descent, where the two coincide), predicted by the SDE,
the ODE (`full_batch`) and the exact replay. About 10 minutes on 2 CPU cores.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import smoke


def get_config(arg: str = '') -> mlc.ConfigDict:
  if arg == 'smoke':
    e = smoke.get_config()
    e.finetune.update(lr=(0.05,), momentum=(0.0,), batch_size=(3, 6, 24))
  else:
    e = default.get_config()
    # The figure's own target (the demo's before it moved to N = 200 at 14×14): B up to N = 500.
    e.target.update(n_train=500, image_size=0)
    e.finetune.update(lr=(0.01,), momentum=(0.0,), batch_size=(10, 25, 50, 100, 250, 500),
                      steps=800, checkpoint_every=200)
  e.predict.methods = ('sde', 'full_batch', 'replay')
  c = mlc.ConfigDict()
  c.experiments = mlc.ConfigDict({'batch_size': e})
  return c
