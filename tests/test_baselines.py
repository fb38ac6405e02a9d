"""The baselines every method is measured against: neural-tangents' gradient flow, the
trivial constant guesses, the aggregates and the verdict."""

import numpy as np
import pytest

from ntk_time import compat
from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import predict
from ntk_time import sgd
from ntk_time import summary as summary_lib
from ntk_time import times


def _problem(n=12, c=3, p=7, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, c, p))
  k = np.einsum('icp,jdp->ijcd', x, x)
  f0 = rng.normal(size=(n, c)) * 0.3
  y = rng.integers(0, c, n).astype(np.int32)
  return k, f0, y


def test_nt_gradient_flow_is_the_mse_closed_form():
  pytest.importorskip('neural_tangents', reason='the nt baseline needs neural-tangents')
  k, f0, y = _problem()
  steps = np.arange(0, 201, 20)
  with compat.enable_x64():
    fx, _ = ntk.nt_gradient_descent(k, f0, y, steps, lr=0.05, momentum=0.0, loss='mse')
    loss = 0.5 * np.mean(np.sum((fx - np.eye(3)[y]) ** 2, -1), -1)
    closed = dynamics.mse_closed_form(k, f0, y, 0.05, steps)
  np.testing.assert_allclose(loss, closed, rtol=1e-6)
  assert loss[-1] < 0.8 * loss[0]  # it moved (Θ has rank 7 of 36: the rest stays)


def test_nt_gradient_flow_with_momentum_tracks_heavy_ball_at_a_small_step():
  """nt's continuous heavy-ball ODE against the exact discrete momentum simulator: they
  differ by O(η λ/N) and by the ODE's momentum build-up; close at a small learning rate."""
  pytest.importorskip('neural_tangents', reason='the nt baseline needs neural-tangents')
  k, f0, y = _problem()
  hp = sgd.SGD(lr=0.002, batch_size=12, steps=400, momentum=0.9)
  steps = np.arange(0, 401, 20)
  with compat.enable_x64():
    fx, _ = ntk.nt_gradient_descent(k, f0, y, steps, lr=hp.lr, momentum=hp.momentum,
                                    loss='cross_entropy')
    curves, _, _ = dynamics.simulate_full_batch(sgd.learning_rates(hp), k, f0, y,
                                                loss='cross_entropy', eval_every=20,
                                                momentum=hp.momentum)
  lse = np.log(np.sum(np.exp(fx), -1))
  nt_loss = np.mean(lse - np.take_along_axis(fx, y[None, :, None], -1)[..., 0], -1)
  np.testing.assert_allclose(nt_loss, curves['train_loss'][0], rtol=0.02)
  assert nt_loss[-1] < 0.8 * nt_loss[0]


def test_nt_method_through_predict():
  pytest.importorskip('neural_tangents', reason='the nt baseline needs neural-tangents')
  k, f0, y = _problem()
  lin = ntk.Linearization(k_train_train=k.astype(np.float32), k_test_train=k[:4].astype(np.float32),
                          fx_train_0=f0.astype(np.float32), fx_test_0=f0[:4].astype(np.float32),
                          jw0_train=np.zeros_like(f0, np.float32),
                          jw0_test=np.zeros((4, 3), np.float32))
  hp = [sgd.SGD(lr=0.05, batch_size=12, steps=100)]
  [nt_pred] = predict.predict(lin, y, y[:4], hp, method='nt_gradient_descent', loss='mse',
                              eval_every=10, targets=times.Targets())
  [fb] = predict.predict(lin, y, y[:4], hp, method='full_batch', loss='mse', eval_every=10,
                         targets=times.Targets())
  assert not nt_pred.diverged and nt_pred.method == 'nt_gradient_descent'
  # Gradient flow against its Euler discretisation at η λ_max / N well below 1.
  np.testing.assert_allclose(nt_pred.curves['train_loss'].mean, fb.curves['train_loss'].mean,
                             rtol=0.03)
  np.testing.assert_allclose(nt_pred.curves['test_loss'].mean[0], fb.curves['test_loss'].mean[0],
                             rtol=1e-5)


def _row(real_times, pred_times, horizon=400):
  """A ConfigResult with one definition ('t_eps', the others copied) per side."""
  d = times.Targets().definitions
  real = summary_lib.Real(
      curves={'train_loss': [np.ones(3)]}, times={k: times.estimate([real_times], horizon)
                                                   for k in d},
      spread=dict.fromkeys(d), train_seconds=[1.0], seconds_per_step=0.1, diverged_at=[None])
  errors = {m: {k: times.error(t, real_times, horizon) for k in d}
            | {'curve_log_error': summary_lib.Error(None)} for m, t in pred_times.items()}
  return summary_lib.ConfigResult(name='x', hparams={}, horizon=horizon, eval_every=20,
                                  steps=np.arange(3), real=real, predicted={}, errors=errors,
                                  seconds=None)


def test_a_method_works_only_where_it_beats_every_baseline():
  targets = times.Targets()
  rows = [_row(100, {'good': 110, 'bad': 300, 'const': 200}),
          _row(200, {'good': 190, 'bad': 100, 'const': 200}),
          _row(300, {'good': None, 'bad': 300, 'const': 200})]  # good misses: at 400, 33%
  agg = pipeline.aggregate(rows, ['good', 'bad', 'const'], targets)
  assert agg['good']['t_eps'].misses == 1
  assert agg['good']['t_eps'].median == pytest.approx(0.1)  # 0.1, 0.05, 1/3
  assert agg['good']['levels'].n == 3 * len(targets.levels)
  v = pipeline.verdicts(agg, ['good', 'bad'], ['const'])
  assert v['good'].works and v['good'].beats == ['const']
  # bad: errors 2, 0.5, 0 -> median 0.5, against const's 1, 0, 1/3 -> 1/3: it loses.
  assert not v['bad'].works and v['bad'].loses_to == ['const']


def test_trivial_baselines_guess_per_grid():
  targets = times.Targets(levels=(2.0,))
  reals = [_row(t, {}).real for t in (60, 100, 300)]
  configs = [sgd.SGD(lr=0.1, batch_size=1, steps=400)] * 3
  guesses = pipeline._constants(reals, configs, targets, 0.5, 20)  # pylint: disable=protected-access
  assert guesses['horizon_fraction'][0]['t_eps'] == 200
  best = guesses['best_constant'][0]['t_eps']
  cands = np.arange(0, 401, 20)
  score = lambda c: np.median([times.error(c, t, 400).value for t in (60, 100, 300)])
  assert score(best) == min(score(c) for c in cands)
