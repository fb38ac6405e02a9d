r"""Figure 1: real vs predicted training loss and accuracy, with the SDE's 5–95% band.

  python -m experiments.fig_curves --config=ntk_time/configs/fig_curves.py --workdir=workdirs/accuracy

The experiments of figure 2 (ntk_time/configs/fig_times.py): run in the same
workdir, everything is reused and only the figure is drawn. `show` picks grid
points (product order lr × B × m): by default lr=0.001 B=10 m=0,
lr=0.001 B=50 m=0.9, lr=0.02 B=10 m=0.9 and lr=0.02 B=50 m=0.
"""

import ml_collections as mlc

from ntk_time.configs import fig_times


def get_config(arg: str = '') -> mlc.ConfigDict:
  c = mlc.ConfigDict()
  c.experiments = fig_times.experiments(arg)
  c.show = (0, 1, 2, 3) if arg == 'smoke' else (0, 3, 5, 6)
  return c
