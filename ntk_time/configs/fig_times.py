r"""Figure 2 (and the README's accuracy table): predicted vs real T_eps on three targets.

  python -m experiments.fig_times --config=ntk_time/configs/fig_times.py --workdir=workdirs/accuracy

The three targets of the accuracy study (`make accuracy` runs exactly this, then
experiments/report.py): Fashion-MNIST 5–9, digits 0–4 at 28×28 and Fashion-MNIST
5–9 at 14×14, each the demo grid (8 configurations, 800 steps) with 3 real seeds
(the seed-to-seed spread is the floor no predictor can beat), all from the one
ResNet-8 pretrained on Fashion-MNIST 0–4. An estimate from the demo's step
times: about 70 minutes on 2 quiet CPU cores. `:smoke` runs three tiny digits
targets in seconds.
"""

import ml_collections as mlc

from ntk_time.configs import default
from ntk_time.configs import digits
from ntk_time.configs import fashion14
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
                         'fashion14': fashion14.get_config()})


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.experiments = experiments(arg)
  return c
