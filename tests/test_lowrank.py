"""The low-rank simulators (dynamics.low_rank, DESIGN §3.6): against the dense ones and
known answers."""

import jax
import numpy as np
import pytest

from ntk_time.compat import enable_x64
from ntk_time import checks
from ntk_time import dynamics
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times
from ntk_time.configs import smoke


def _problem(n=10, n_test=4, c=3, decay=0.8, traced=False, seed=0):
  """Train and test kernels of features whose scales decay geometrically, so that the
  train kernel's spectrum does too (λ_j roughly ∝ decay^j); outputs, labels, J w0."""
  rng = np.random.default_rng(seed)
  p = 3 * n * c
  scale = decay ** (0.5 * np.arange(p))
  if traced:
    x = rng.normal(size=(n + n_test, p)) * scale
    k = 20.0 * x @ x[:n].T / np.sum(scale**2)
    k_tt, k_st = k[:n], k[n:]
  else:
    x = (rng.normal(size=((n + n_test) * c, p)) * scale).reshape(n + n_test, c, p)
    k = 20.0 * np.einsum('icp,jdp->ijcd', x, x[:n]) / np.sum(scale**2)
    k_tt, k_st = k[:n], k[n:]
  arrays = dict(fx_test_0=rng.normal(size=(n_test, c)) * 0.5, y_test=rng.integers(0, c, n_test),
                jw0_train=rng.normal(size=(n, c)), jw0_test=rng.normal(size=(n_test, c)),
                k_test_train=k_st)
  return k_tt, rng.normal(size=(n, c)) * 0.5, rng.integers(0, c, n).astype(np.int32), arrays


def _rows(k):
  return k.shape[0] * (k.shape[2] if k.ndim == 4 else 1)


def _assert_same(a, b, rtol=1e-9):
  (ca, fa, fta), (cb, fb, ftb) = a, b
  np.testing.assert_allclose(fa, fb, rtol=rtol, atol=1e-11)
  np.testing.assert_allclose(fta, ftb, rtol=rtol, atol=1e-11)
  for name in ('train_loss', 'test_loss', 'train_acc', 'test_acc'):
    np.testing.assert_allclose(ca[name], cb[name], rtol=rtol, atol=1e-11, err_msg=name)


@pytest.mark.parametrize('traced', [False, True])
@pytest.mark.parametrize('sampling', ['iid', 'epoch'])
def test_full_rank_sde_equals_dense(traced, sampling):
  """k = N·C (N for a class-traced K): the same paths from the same keys, momentum,
  weight decay and the held-out outputs included."""
  k, f0, y, arrays = _problem(traced=traced)
  kw = dict(batch_size=3, loss='cross_entropy', eval_every=5, momentum=0.5, weight_decay=0.05,
            sampling=sampling, **arrays)
  keys, lrs = jax.random.split(jax.random.key(3), 4), np.full(30, 0.4)
  with enable_x64():
    dense = dynamics.simulate_sde(keys, lrs, k, f0, y, **kw)
    low = dynamics.simulate_sde(keys, lrs, dynamics.low_rank(k, _rows(k)), f0, y, **kw)
  _assert_same(low, dense)
  assert np.abs(dense[1] - f0).max() > 0.1  # it moved
  assert np.ptp(dense[0]['train_loss'][:, -1]) > 1e-3  # and the paths differ: the noise acts


@pytest.mark.parametrize('traced', [False, True])
@pytest.mark.parametrize('hp_kwargs', [dict(momentum=0.9),
                                       dict(momentum=0.7, nesterov=True, weight_decay=0.05)])
def test_full_rank_replay_and_full_batch_equal_dense(traced, hp_kwargs):
  """k = N·C: the exact minibatch simulator on the same orders, and its B = N limit."""
  k, f0, y, arrays = _problem(traced=traced)
  hp = sgd.SGD(lr=0.1, batch_size=3, steps=30, **hp_kwargs)
  orders = np.stack([sgd.batch_order(kk, len(y), hp.batch_size, hp.steps)
                     for kk in jax.random.split(jax.random.key(4), 3)])
  kw = dict(loss='cross_entropy', eval_every=5, momentum=hp.momentum, nesterov=hp.nesterov,
            weight_decay=hp.weight_decay, **arrays)
  lrs = sgd.learning_rates(hp)
  with enable_x64():
    basis = dynamics.low_rank(k, _rows(k))
    _assert_same(dynamics.simulate_sgd(orders, lrs, basis, f0, y, **kw),
                 dynamics.simulate_sgd(orders, lrs, k, f0, y, **kw))
    _assert_same(dynamics.simulate_full_batch(lrs, basis, f0, y, **kw),
                 dynamics.simulate_full_batch(lrs, k, f0, y, **kw))


def _truncated(basis):
  """U Λ Uᵀ as a dense [N, N, C, C] kernel."""
  u = basis.eigvecs
  n, c, r = u.shape
  flat = (u.reshape(n * c, r) * basis.eigvals) @ u.reshape(n * c, r).T
  return flat.reshape(n, c, n, c).transpose(0, 2, 1, 3)


def test_mse_low_rank_is_the_closed_form_with_frozen_modes():
  """MSE, full batch: the rank-j simulator is the closed form of Θ_j = U_j Λ_j U_jᵀ (its
  dropped modes frozen, eigenvalue 0), exactly; against the dense closed form it is
  above by at most the bound β_j (dynamics.truncation_bounds), which it nearly reaches
  for the modes that barely move."""
  k, f0, y, _ = _problem(n=12)
  n = len(y)
  steps = 300
  ts = np.arange(0, steps + 1, 30)
  with enable_x64():
    full = dynamics.low_rank(k, _rows(k))
    lr = n / full.eigvals[0]  # η λ_max / N = 1: stable, and the modes down to ~λ_max/300 move
    dense = dynamics.mse_closed_form(k, f0, y, lr, ts, discrete=True)
    bounds = dynamics.truncation_bounds(k, full, f0, y, loss='mse', lr_sum=lr * steps)
    errors = []
    for j in (2, 4, 8, 16, 24):
      basis = dynamics.LowRank(full.eigvals[:j], full.eigvecs[..., :j])
      curves, _, _ = dynamics.simulate_full_batch(np.full(steps, lr), basis, f0, y, loss='mse',
                                                  eval_every=30)
      low = curves['train_loss'][0]
      np.testing.assert_allclose(
          low, dynamics.mse_closed_form(_truncated(basis), f0, y, lr, ts, discrete=True),
          rtol=1e-10)
      assert np.all(low - dense >= -1e-12) and np.all(low - dense <= bounds[j - 1]), j
      errors.append((low - dense).max())
  assert np.all(np.diff(errors) < 0) and errors[0] > 0.05 * dense[0], errors


def test_cross_entropy_error_decreases_with_rank():
  """Cross-entropy on a kernel with a decaying spectrum: the curve error
  max|log L̂_k − log L| against the dense simulators falls with k, to rounding at
  k = N·C, and the loss error stays below the estimate β_k (not a bound for
  cross-entropy; measured here: 4-9× above the error at ranks 2-24)."""
  k, f0, y, arrays = _problem(n=12)
  steps = 400
  keys = jax.random.split(jax.random.key(5), 8)
  kw = dict(loss='cross_entropy', eval_every=20, **arrays)
  ranks = (2, 4, 8, 16, 36)
  with enable_x64():
    full = dynamics.low_rank(k, _rows(k))
    lr = len(y) / full.eigvals[0]
    lrs = np.full(steps, lr)
    bounds = dynamics.truncation_bounds(k, full, f0, y, loss='cross_entropy', lr_sum=lr * steps)
    ode = dynamics.simulate_full_batch(lrs, k, f0, y, **kw)[0]['train_loss'][0]
    sde = dynamics.simulate_sde(keys, lrs, k, f0, y, batch_size=4, **kw)[0]['train_loss']
    ode_err, sde_err = [], []
    for j in ranks:
      basis = dynamics.LowRank(full.eigvals[:j], full.eigvecs[..., :j])
      low = dynamics.simulate_full_batch(lrs, basis, f0, y, **kw)[0]['train_loss'][0]
      assert np.abs(low - ode).max() <= bounds[j - 1], j
      ode_err.append(np.abs(np.log(low) - np.log(ode)).max())
      low = dynamics.simulate_sde(keys, lrs, basis, f0, y, batch_size=4, **kw)[0]['train_loss']
      sde_err.append(np.abs(np.log(low) - np.log(sde)).max())
  assert ode[-1] < 0.3 * ode[0]
  for errors in (ode_err, sde_err):
    assert np.all(np.diff(errors) < 0), errors
    assert errors[0] > 0.05 and errors[-1] < 1e-9, errors


@pytest.mark.parametrize('traced', [False, True])
def test_lanczos_basis_equals_the_full_eigendecomposition(traced):
  """rank <= N·C/16 goes through Lanczos: the same eigenvalues and subspace as eigh's."""
  k, _, _, _ = _problem(n=160 if traced else 64, c=3, traced=traced, decay=0.9)
  rank = _rows(k) // 16
  lanczos, dense = dynamics.low_rank(k, rank), dynamics.low_rank(k, rank + 1)
  np.testing.assert_allclose(lanczos.eigvals, dense.eigvals[:rank], rtol=1e-10)
  u, v = (b.eigvecs.reshape(-1, b.eigvecs.shape[-1]) for b in (lanczos, dense))
  np.testing.assert_allclose(u @ u.T, v[:, :rank] @ v[:, :rank].T, atol=1e-8)
  assert np.all(np.diff(lanczos.eigvals) <= 0)


@pytest.mark.parametrize('traced', [False, True])
def test_low_rank_within_is_the_smallest_rank_under_the_tolerance(traced):
  k, f0, y, _ = _problem(n=30, traced=traced)
  kw = dict(fx_train_0=f0, y_train=y, loss='cross_entropy', lr_sum=100.0)
  bounds = dynamics.truncation_bounds(k, dynamics.low_rank(k, _rows(k)), **kw)
  for tol in (1e-1, 1e-3):
    rank = len(dynamics.low_rank_within(k, tol, **kw).eigvals)
    assert bounds[rank - 1] <= tol < bounds[rank - 2], (tol, rank)
  assert bounds[-1] < 1e-9  # every mode kept: nothing dropped


def test_predict_low_rank_full_rank_equals_dense_and_rank_tol_reports_its_rank():
  k, f0, y, arrays = _problem()
  lin = ntk.Linearization(k, arrays['k_test_train'], f0, arrays['fx_test_0'], arrays['jw0_train'],
                          arrays['jw0_test'])
  grid = [sgd.SGD(lr=0.3, batch_size=3, steps=40, momentum=m) for m in (0.0, 0.5)]
  kw = dict(key=jax.random.key(0), loss='cross_entropy', eval_every=10, targets=times.Targets(),
            num_paths=4, dtype=np.float64)
  with enable_x64():
    for method in ('sde', 'replay', 'full_batch'):
      dense = predict.predict(lin, y, arrays['y_test'], grid, method=method, **kw)
      full = predict.predict(lin, y, arrays['y_test'], grid, method=method, rank=_rows(k), **kw)
      for a, b in zip(full, dense):
        assert (a.rank, b.rank) == (_rows(k), 0)
        for name in ('train_loss', 'test_loss'):
          np.testing.assert_allclose(a.curves[name].mean, b.curves[name].mean, rtol=1e-9)
    [chosen, _] = predict.predict(lin, y, arrays['y_test'], grid, method='sde', rank_tol=0.05, **kw)
  assert 1 <= chosen.rank < _rows(k)
  with pytest.raises(ValueError, match="rank=5, rank_tol=0.0 is for the methods"):
    predict.predict(lin, y, arrays['y_test'], grid, method='head_aware', rank=5, **kw)


@pytest.mark.parametrize('updates, match', [
    (dict(rank=-1), 'predict.rank=-1'),
    (dict(rank_tol=-0.1), 'predict.rank_tol=-0.1'),
    (dict(rank=10, rank_tol=0.01), 'predict.rank=10 and predict.rank_tol=0.01'),
    (dict(rank=10_000), 'predict.rank=10000 is more than'),
    (dict(rank=10, methods=('head_aware',)),
     r"predict.rank=10, .*predict.methods=\('head_aware',\)"),
])
def test_bad_low_rank_config_is_refused(updates, match):
  config = smoke.get_config()
  config.predict.update(**updates)
  with pytest.raises(ValueError, match=match):
    checks.check(config)
