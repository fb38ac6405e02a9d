"""Subset prediction against known answers: the closed form, real SGD averages, a known full set."""

import jax
import numpy as np
import pytest

from ntk_time.compat import enable_x64
from ntk_time import dynamics
from ntk_time import sgd
from ntk_time import subset


def _features(n, p=600, c=3, alpha=1.3, seed=0):
  """A linear model with a power-law feature spectrum: Θ[i, j, a, b] = x_ia · x_jb."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, c, p)) * np.arange(1, p + 1) ** (-alpha / 2)
  k = np.einsum('iap,jbp->ijab', x, x)
  y = rng.integers(0, c, n)
  return k, np.zeros((n, c)), y


def test_modes_with_full_batch_are_the_closed_form():
  k, f0, y = _features(40)
  lam, energy = subset.spectrum(k, f0, y, 'mse')
  # An lr that float32 holds exactly: optax computes the schedule in float32.
  hp = sgd.SGD(lr=float(np.float32(0.5 * 40 / lam[0])), batch_size=40, steps=60)
  steps, loss = subset.simulate_modes(lam, energy, hp, n=40, num_classes=3, eval_every=10)
  closed = dynamics.mse_closed_form(k, f0, y, hp.lr, steps, discrete=True)
  np.testing.assert_allclose(loss, closed, rtol=1e-10)


def test_modes_match_the_average_of_real_minibatch_runs():
  """The mean-field noise term against 64 reshuffled runs of the exact simulator."""
  n, c = 120, 3
  k, f0, y = _features(n, c=c)
  lam, energy = subset.spectrum(k, f0, y, 'mse')
  hp = sgd.SGD(lr=1.0 * n / lam[0], batch_size=6, steps=200, momentum=0.0)
  steps, modes = subset.simulate_modes(lam, energy, hp, n=n, num_classes=c, eval_every=20)
  orders = np.stack([sgd.batch_order(jax.random.key(s), n, 6, 200) for s in range(64)])
  with enable_x64():
    curves, _, _ = dynamics.simulate_sgd(orders, sgd.learning_rates(hp), k, f0, y, loss='mse',
                                         eval_every=20)
    real = np.asarray(curves['train_loss']).mean(0)
  # The noise term assumes eigenvectors spread evenly over samples: here the modes' loss is
  # 2-7% above the real average (64 runs), the error of that assumption and of sampling.
  np.testing.assert_allclose(modes, real, rtol=0.08)
  # ... and the noise matters: without it (B = N dynamics at the same lr) the loss is lower.
  _, no_noise = subset.simulate_modes(lam, energy, sgd.SGD(lr=hp.lr, batch_size=n, steps=200),
                                      n=n, num_classes=c, eval_every=20)
  assert np.all(no_noise[3:] < 0.97 * real[3:])


def test_extrapolation_from_growing_subsets_converges_to_the_full_set():
  """Full-batch gradient descent on N = 600 (where simulate_modes is exact), predicted
  from the spectra of M = 60 ... 600 samples, against the closed form on the full
  kernel (not the project's simulator). Measured max relative errors over the curve:
  0.603, 0.286, 0.238, 0.034 (at M = N, that of the power-law tail that replaces the
  trailing half of the modes); keep=1 at M = N is the identity. A flat energy tail gives
  0.648, 0.303, 0.247. (The floor κ has no visible effect here: the modes it lifts hardly
  move in 300 steps.)"""
  n, c = 600, 1
  k, f0, y = _features(n, p=1500, c=c, seed=1)
  spectra = {m: subset.spectrum(k[:m, :m], f0[:m], y[:m], 'mse') for m in (60, 150, 300, n)}
  hp = sgd.SGD(lr=0.5 * n / spectra[n][0][0], batch_size=n, steps=300)
  steps = np.arange(0, 301, 20)
  truth = dynamics.mse_closed_form(k, f0, y, hp.lr, steps, discrete=True)
  assert truth[-1] < 0.75 * truth[0]

  def error(m, **kwargs):
    lam_m, energy_m = spectra[m]
    ex = subset.extrapolate(lam_m, energy_m, m, n, **kwargs)
    assert ex['lam'].shape == (n * c,) and ex['energy'].sum() == pytest.approx(
        n / m * energy_m.sum())
    got_steps, pred = subset.simulate_modes(ex['lam'], ex['energy'], hp, n=n, num_classes=c,
                                            eval_every=20)
    np.testing.assert_array_equal(got_steps, steps)
    return float(np.max(np.abs(pred / truth - 1)))
  errors = [error(m) for m in (60, 150, 300, 600)]
  assert errors == sorted(errors, reverse=True), errors
  np.testing.assert_array_less(errors, [0.63, 0.30, 0.25, 0.036])  # measured + 5%
  assert error(n, keep=1.0) < 1e-3


def test_replica_sde_is_the_sde_of_the_copied_set():
  """A set made of N/M copies of M samples: its SDE and the replica SDE on the M agree."""
  m, copies, c = 8, 4, 3
  k, f0, y = _features(m, p=40, c=c, seed=2)
  n = m * copies
  idx = np.tile(np.arange(m), copies)
  hp = sgd.SGD(lr=0.3 * m / np.linalg.eigvalsh(k.transpose(0, 2, 1, 3).reshape(m * c, -1))[-1],
               batch_size=4, steps=40)
  lrs = sgd.learning_rates(hp)
  keys = jax.random.split(jax.random.key(0), 4000)
  with enable_x64():
    rep, _, _ = dynamics.simulate_sde(keys, lrs, k, f0, y, batch_size=4, loss='cross_entropy',
                                      eval_every=10, population=n)
    full, _, _ = dynamics.simulate_sde(keys, lrs, k[idx][:, idx], f0[idx], y[idx], batch_size=4,
                                       loss='cross_entropy', eval_every=10)
    rep, full = (np.asarray(a['train_loss']) for a in (rep, full))
  np.testing.assert_allclose(rep.mean(0), full.mean(0), rtol=2e-3)
  np.testing.assert_allclose(rep.std(0)[1:], full.std(0)[1:], rtol=0.08)
  with pytest.raises(ValueError, match='population=4 is smaller than the 8 samples'):
    dynamics.simulate_sde(keys[:1], lrs, k, f0, y, batch_size=4, loss='mse', eval_every=10,
                          population=4)


def test_modes_with_momentum_and_full_batch_are_heavy_ball_gradient_descent():
  k, f0, y = _features(30)
  lam, energy = subset.spectrum(k, f0, y, 'mse')
  hp = sgd.SGD(lr=float(np.float32(2.0 * 30 / lam[0])), batch_size=30, steps=80, momentum=0.9)
  _, loss = subset.simulate_modes(lam, energy, hp, n=30, num_classes=3, eval_every=10)
  with enable_x64():
    curves, _, _ = dynamics.simulate_full_batch(sgd.learning_rates(hp), k, f0, y, loss='mse',
                                                eval_every=10, momentum=0.9)
  # η̃ λ_max / N = 20 here: plain gradient descent at η/(1-m) would diverge, heavy ball does not.
  np.testing.assert_allclose(loss, np.asarray(curves['train_loss'])[0], rtol=1e-9)
