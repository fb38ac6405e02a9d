r"""Figure 2 (and the README's accuracy table): predicted vs real T_eps on three targets.

  python -m experiments.fig_times --config=ntk_time/configs/fig_times.py --workdir=workdirs/accuracy

The three targets of the accuracy study (`make accuracy` runs exactly this, then
experiments/report.py): Fashion-MNIST 5–9 under cross-entropy (the demo),
digits 0–4 (the far domain) and Fashion-MNIST 5–9 under the squared loss (where
the linearisation should hold), each N = 200 at 14×14 with the demo's grid
shape (8 configurations, 1,200 steps) and 3 real seeds (the seed-to-seed spread
is the floor no predictor can beat), all from the one ResNet-8 pretrained on
Fashion-MNIST 0–4. `:smoke` runs three tiny digits
targets in seconds.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import digits
from ntk_time.configs import fashion_mse
from ntk_time.configs import smoke


def experiments(arg: str = '') -> mlc.ConfigDict:
  """The named compare configs of figures 1 and 2."""
  if arg == 'smoke':
    a, b, c = smoke.get_config(), smoke.get_config(), smoke.get_config()
    b.target.classes = (7, 8, 9)
    c.target.image_size = 6
    return mlc.ConfigDict({'digits567': a, 'digits789': b, 'digits567_6px': c})
  fashion = default.get_config()
  fashion.finetune.seeds = 3
  return mlc.ConfigDict({'fashion': fashion, 'digits': digits.get_config(),
                         'fashion_mse': fashion_mse.get_config()})


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.experiments = experiments(arg)
  return c
