"""The pipeline's own pieces: step timing, configs without the library, figures that
show failures."""

import os
import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from ntk_time import pipeline
from ntk_time import plots
from ntk_time import sgd
from ntk_time import summary as summary_lib
from ntk_time import times

matplotlib.use('Agg')


def test_step_timing_times_each_batch_size_once(monkeypatch):
  """One timing and FLOP count (one compilation) per batch size, with its first configuration's
  optimiser; FLOP seconds calibrated by the first batch size's timing."""
  timed = []
  monkeypatch.setattr(pipeline.finetune, 'step_cost',
                      lambda apply_fn, params, task, hp, **kw: timed.append(hp) or
                      (hp.batch_size, 10.0 * hp.batch_size + (hp.momentum > 0)))
  grid = [sgd.SGD(lr=lr, batch_size=b, steps=10, momentum=m, weight_decay=w)
          for lr in (0.1, 0.01) for b in (5, 10) for m in (0.0, 0.9) for w in (0.0, 1e-3)]
  measured, flop_seconds, flops = pipeline._step_timings(  # pylint: disable=protected-access
      None, None, None, grid, 'mse', key=np.zeros(2, np.uint32))
  assert [hp.batch_size for hp in timed] == [5, 10]
  assert timed == [grid[0], grid[4]]  # each batch size's first configuration, as given
  assert measured == [hp.batch_size for hp in grid]
  # FLOP seconds are calibrated by the first batch size's timing: 5 s for 50 FLOPs.
  assert flop_seconds == pytest.approx([f * 5 / 50 for f in flops])
  assert flops == [50.0 if hp.batch_size == 5 else 100.0 for hp in grid]


def test_configs_load_without_the_library():
  code = ('import sys; from ntk_time.configs import default, smoke, fig_times, subset, paper; '
          'default.get_config(); fig_times.get_config("smoke"); '
          'heavy = {"jax", "flax", "scipy", "optax", "tensorflow"} & set(sys.modules); '
          'assert not heavy, heavy')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, '-c', code], cwd=root, check=True)


def _diverged_row():
  steps = np.arange(0, 101, 20)
  real = np.array([1.0, 0.6, 0.4, np.nan, np.nan, np.nan])
  band = summary_lib.Band(*(np.array([1.0, 0.7, 0.5, 0.4, 0.35, 0.3]),) * 4)
  ok = summary_lib.Prediction('replay', {}, steps, 1.0, 0.0, False, {'train_loss': band})
  bad = [summary_lib.Prediction(m, {}, steps, 1.0, 0.0, True) for m in ('sde', 'head_aware')]
  t = times.estimate([None], 100)
  return summary_lib.ConfigResult(
      name='x', hparams={}, horizon=100, eval_every=20, steps=steps,
      real=summary_lib.Real(curves={'train_loss': [real]}, times={'t_eps': t}, spread={},
                            train_seconds=[1.0], seconds_per_step=0.1, diverged_at=[60]),
      predicted={'replay': ok, 'sde': bad[0], 'head_aware': bad[1]}, errors={}, seconds=None)


def test_a_divergence_is_drawn_not_hidden():
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots()
  plots._panel(ax, _diverged_row(), 'train_loss', ['sde', 'replay', 'head_aware'], 'sde')  # pylint: disable=protected-access
  lines = {l.get_label(): l for l in ax.get_lines()}
  np.testing.assert_array_equal(lines['real'].get_xdata(), [0, 20, 40])  # up to the divergence
  assert 'real diverges (step 60)' in lines
  assert lines['real diverges (step 60)'].get_xdata()[0] == 40
  [box] = [t.get_text() for t in ax.texts]
  assert box == 'predicted to diverge:\nsde\nhead_aware'  # listed once, not overprinted
  lo, hi = ax.get_ylim()
  assert lo == pytest.approx(0.3 / 1.3) and hi == pytest.approx(1.3)  # the data's range
  plt.close(fig)
