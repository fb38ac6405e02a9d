"""The large-learning-rate (catapult) regime (issue 14, item 6): 'catapult' is 'replay' below
the linear limit, 'replay' on a clipped kernel between it and the catapult's edge, and a
divergence above the edge."""

import os

import jax
import numpy as np
import pytest

from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import pipeline
from ntk_time import predict
from ntk_time import sgd
from ntk_time import summary as summary_lib
from ntk_time import times
from ntk_time.compat import enable_x64


def _lin(n=12, c=3, nt_=5, seed=0, top=30.0):
  """An NTK-shaped kernel: a random PSD rest plus a dominant flat top mode (as test_limits)."""
  rng = np.random.default_rng(seed)
  feats = rng.normal(size=(n + nt_, c, 60)) / np.sqrt(60)
  k = np.einsum('icp,jdp->ijcd', feats, feats[:n])
  flat = np.ones((n + nt_) * c) / np.sqrt(n * c)
  k = k + top * np.einsum('a,b->ab', flat, flat[:n * c]).reshape(
      n + nt_, c, n, c).transpose(0, 2, 1, 3)
  f = rng.normal(size=(n + nt_, c)) * 0.1
  lin = ntk.Linearization(k[:n], k[n:], f[:n], f[n:], np.zeros((n, c)), np.zeros((nt_, c)))
  return lin, rng.integers(0, c, n), rng.integers(0, c, nt_)


def _max_eig(lin):
  return predict.largest_eigenvalue(lin.k_train_train)


def _predict(lin, y, yt, configs, method, loss='mse', num_paths=3, eval_every=10, **kw):
  with enable_x64():
    return predict.predict(lin, y, yt, configs, key=jax.random.key(1), method=method, loss=loss,
                           eval_every=eval_every, targets=times.Targets(), num_paths=num_paths,
                           dtype=np.float64, **kw)


@pytest.mark.parametrize('momentum', [0.0, 0.9])
@pytest.mark.parametrize('batch_size', [4, 12])
def test_below_the_linear_limit_it_is_replay(momentum, batch_size):
  lin, y, yt = _lin()
  limit = dynamics.lr_limit('replay', _max_eig(lin), 12, 'mse', momentum=momentum)
  hp = sgd.SGD(lr=0.3 * limit, batch_size=batch_size, steps=60, momentum=momentum)
  [cat], [rep] = (_predict(lin, y, yt, [hp], m) for m in ('catapult', 'replay'))
  assert not cat.diverged and cat.catapult['cap'] is None and cat.catapult['clipped'] == 0
  for name in predict.CURVES:
    for q in ('mean', 'q05', 'q50', 'q95'):
      np.testing.assert_array_equal(getattr(cat.curves[name], q), getattr(rep.curves[name], q))
  assert cat.times == rep.times


def _jacobians(n=6, c=2, nt_=3, p=40, seed=0):
  rng = np.random.default_rng(seed)
  j = rng.normal(size=((n + nt_) * c, p)) / np.sqrt(p)
  j[:, 0] *= 8.0  # a dominant direction
  return j[:n * c], j[n * c:], n, c, nt_


def test_clip_kernel_is_the_linear_model_with_its_top_jacobian_directions_scaled():
  """Θ' and Θ'[test, train] == J' J'ᵀ and J'_test J'ᵀ, J' = J scaled by √(cap/λ_k) along
  the right singular vectors of J whose λ_k = σ_k² is above cap, for train and test alike."""
  j, jt, n, c, nt_ = _jacobians()
  to4 = lambda a, n1: a.reshape(n1, c, n, c).transpose(0, 2, 1, 3)
  _, sig, vt = np.linalg.svd(j, full_matrices=False)
  lam = sig**2
  cap = 0.5 * (lam[1] + lam[2])  # two above
  scale = np.where(lam > cap, np.sqrt(cap / lam), 1.0)
  shrink = np.eye(j.shape[1]) - vt.T @ np.diag(1.0 - scale) @ vt
  jp, jtp = j @ shrink, jt @ shrink
  k_tt, k_st, clipped = dynamics.clip_kernel(to4(j @ j.T, n), to4(jt @ j.T, nt_), cap)
  assert clipped == 2
  np.testing.assert_allclose(k_tt, to4(jp @ jp.T, n), atol=1e-12)
  np.testing.assert_allclose(k_st, to4(jtp @ jp.T, nt_), atol=1e-12)
  np.testing.assert_allclose(np.linalg.eigvalsh(dynamics._flat(k_tt))[::-1][:3],
                             [cap, cap, lam[2]], rtol=1e-10)
  # A class-traced K is clipped as K (Θ' = K' ⊗ I_C).
  k = j[::c] @ j[::c].T
  kt = jt[::c] @ j[::c].T
  lk, u = np.linalg.eigh(k)
  cap_k = 0.5 * (lk[-1] + lk[-2])
  k2, kt2, one = dynamics.clip_kernel(k, kt, cap_k)
  assert one == 1
  np.testing.assert_allclose(k2, k - (lk[-1] - cap_k) * np.outer(u[:, -1], u[:, -1]), atol=1e-12)
  np.testing.assert_allclose(
      kt2, kt - (1 - cap_k / lk[-1]) * np.outer(kt @ u[:, -1], u[:, -1]), atol=1e-12)
  with pytest.raises(ValueError, match='cap=0'):
    dynamics.clip_kernel(k, kt, 0)


def test_in_the_window_it_is_the_closed_form_of_the_clipped_kernel():
  """Full batch (B = N), MSE, m = 0, η between the linear limit 2N/λ_max and the edge
  4N/λ_max: the replay diverges; 'catapult' is the discrete closed form with every
  eigenvalue above 0.9 λ_s (λ_s = 2N/η) replaced by 0.9 λ_s."""
  lin, y, yt = _lin()
  n = len(y)
  lam_max = _max_eig(lin)
  linear = dynamics.lr_limit('replay', lam_max, n, 'mse')
  assert linear == pytest.approx(2 * n / lam_max)
  hp = sgd.SGD(lr=1.5 * linear, batch_size=n, steps=200)
  [rep] = _predict(lin, y, yt, [hp], 'replay', num_paths=1)
  [cat] = _predict(lin, y, yt, [hp], 'catapult', num_paths=1)
  assert rep.diverged and not cat.diverged
  stable = 2 * n / hp.lr
  assert cat.catapult['stable_eig'] == pytest.approx(stable)
  assert cat.catapult['cap'] == pytest.approx((1 - predict.CATAPULT_MARGIN) * stable)
  assert cat.catapult['clipped'] == 1 and cat.catapult['linear_limit'] == pytest.approx(linear)
  assert cat.lr_limit == pytest.approx(4 * n / lam_max)
  flat = dynamics._flat(lin.k_train_train)
  lam, u = np.linalg.eigh(0.5 * (flat + flat.T))
  clipped = (u * np.minimum(lam, cat.catapult['cap'])) @ u.T
  k4 = clipped.reshape(n, 3, n, 3).transpose(0, 2, 1, 3)
  closed = dynamics.mse_closed_form(k4, lin.fx_train_0, y, hp.lr, cat.steps, discrete=True)
  np.testing.assert_allclose(cat.curves['train_loss'].mean, closed, rtol=1e-9)


@pytest.mark.parametrize('momentum', [0.0, 0.9])
def test_above_the_edge_it_diverges(momentum):
  lin, y, yt = _lin()
  n = len(y)
  lam_max = _max_eig(lin)
  edge = dynamics.lr_limit('catapult', lam_max, n, 'mse', momentum=momentum)
  # 4/a, or the linear limit 2 (1 + m)/a where that is higher (never at m < 1).
  assert edge == pytest.approx(dynamics.CATAPULT_EDGE * n / lam_max)
  configs = [sgd.SGD(lr=f * edge, batch_size=n, steps=100, momentum=momentum)
             for f in (0.97, 1.03)]
  below, above = _predict(lin, y, yt, configs, 'catapult', num_paths=1)
  assert not below.diverged and below.catapult['cap'] is not None
  assert above.diverged and above.curves is None and above.times is None
  assert above.lr_limit == pytest.approx(edge)


def test_minibatch_divergence_below_the_limit_is_clipped():
  """B = 4 of 12: the minibatches' own curvature makes the replay diverge below the
  full-batch limit (dynamics.lr_limit) on a kernel without a dominant flat mode (at 0.9×
  here); 'catapult' lowers the top until it does not."""
  lin, y, yt = _lin(top=0.0)
  n = len(y)
  limit = dynamics.lr_limit('replay', _max_eig(lin), n, 'mse')
  hp = sgd.SGD(lr=0.9 * limit, batch_size=4, steps=200)
  [rep] = _predict(lin, y, yt, [hp], 'replay', sampling='iid')
  [cat] = _predict(lin, y, yt, [hp], 'catapult', sampling='iid')
  assert rep.diverged and not cat.diverged
  assert cat.catapult['cap'] < _max_eig(lin) and cat.catapult['clipped'] >= 1


def test_cross_entropy_is_replay_even_above_the_limit():
  lin, y, yt = _lin()
  n = len(y)
  limit = dynamics.lr_limit('replay', _max_eig(lin), n, 'cross_entropy')
  hp = sgd.SGD(lr=1.5 * limit, batch_size=4, steps=60)
  [cat], [rep] = (_predict(lin, y, yt, [hp], m, loss='cross_entropy')
                  for m in ('catapult', 'replay'))
  assert cat.lr_limit == rep.lr_limit == pytest.approx(limit)
  assert cat.diverged == rep.diverged
  np.testing.assert_array_equal(cat.curves['train_loss'].mean, rep.curves['train_loss'].mean)


def test_prediction_json_round_trip():
  lin, y, yt = _lin()
  n = len(y)
  hp = sgd.SGD(lr=1.5 * dynamics.lr_limit('replay', _max_eig(lin), n, 'mse'), batch_size=n,
               steps=40)
  [cat] = _predict(lin, y, yt, [hp], 'catapult', num_paths=1)
  back = summary_lib.Prediction.from_json(cat.to_json())
  assert back.to_json() == cat.to_json() and back.catapult['cap'] == cat.catapult['cap']


def test_the_spike_is_the_first_rise_of_the_unclipped_replay():
  lin, y, yt = _lin()
  n = len(y)
  hp = sgd.SGD(lr=1.5 * dynamics.lr_limit('replay', _max_eig(lin), n, 'mse'), batch_size=n,
               steps=60)
  [cat] = _predict(lin, y, yt, [hp], 'catapult', num_paths=1)
  with enable_x64():
    linear, _, _ = dynamics.simulate_full_batch(
        np.full(predict.SPIKE_STEPS, hp.lr), lin.k_train_train, lin.fx_train_0, y, loss='mse',
        eval_every=1)
  loss = np.asarray(linear['train_loss'][0])
  t = int(np.flatnonzero(np.diff(loss) > 0)[0] + 1)
  assert cat.catapult['spike_step'] == t and t < predict.SPIKE_STEPS
  assert cat.catapult['spike_loss'] == pytest.approx(loss[t], rel=1e-9)
  assert loss[t] > loss[t - 1]


def test_pipeline_on_the_smoke_config(smoke_config, tmp_path):
  smoke_config.predict.methods = ('catapult', 'replay')
  s = pipeline.run(smoke_config, str(tmp_path), progress=False)
  assert s.methods[0] == 'catapult'
  for row in s.configs:
    p = row.predicted['catapult']
    assert p.catapult is not None and p.lr_limit >= p.catapult['linear_limit']
    assert 'catapult' in row.errors
    if p.catapult['cap'] is None and not p.diverged:  # below the limit: the replay itself
      np.testing.assert_array_equal(p.curves['train_loss'].mean,
                                    row.predicted['replay'].curves['train_loss'].mean)
  assert summary_lib.Summary.read(str(tmp_path)).to_json() == s.to_json()
  with open(os.path.join(str(tmp_path), 'summary.csv')) as f:
    assert 'catapult' in f.read()
  assert 'catapult' in pipeline.format_table(s)
  assert 'catapult' in '\n'.join(pipeline.markdown_table({'smoke': s}))  # experiments.report
