"""Minibatch sampling: epoch reshuffling against i.i.d. batches (issue 12 item 6)."""

import jax
import numpy as np
import pytest

from ntk_time import dynamics
from ntk_time import sgd
from ntk_time.compat import enable_x64


def test_epoch_order_is_unchanged_by_the_new_argument():
  key = jax.random.key(0)
  np.testing.assert_array_equal(sgd.batch_order(key, 10, 3, 7),
                                sgd.batch_order(key, 10, 3, 7, sampling='epoch'))


def test_iid_batches_are_distinct_inside_and_independent_across_steps():
  n, b, steps = 12, 4, 3000
  order = sgd.batch_order(jax.random.key(1), n, b, steps, sampling='iid')
  assert order.shape == (steps, b) and order.dtype == np.int32
  assert order.min() >= 0 and order.max() < n
  assert all(len(set(row)) == b for row in order)  # B distinct samples per batch
  np.testing.assert_array_equal(order, sgd.batch_order(jax.random.key(1), n, b, steps, 'iid'))
  # Uniform: every sample in a batch with probability B/N.
  counts = np.bincount(order.ravel(), minlength=n)
  expected = steps * b / n
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
  # Independent across steps: consecutive batches share B²/N samples on average,
  # where an epoch's batches (N/B = 3 a epoch) share none inside the epoch.
  shared = [len(set(order[k]) & set(order[k + 1])) for k in range(steps - 1)]
  assert np.mean(shared) == pytest.approx(b * b / n, abs=0.1)
  epoch = sgd.batch_order(jax.random.key(1), n, b, 3, sampling='epoch')
  assert len(set(epoch.ravel())) == n


def test_bad_sampling_is_refused_by_name():
  with pytest.raises(ValueError, match=r"unknown sampling 'with_replacement'.*'epoch', 'iid'"):
    sgd.batch_order(jax.random.key(0), 10, 3, 7, sampling='with_replacement')


def _problem(n, c=2, seed=1):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n * c, 3 * n * c)) / np.sqrt(n * c)
  k = (a @ a.T).reshape(n, c, n, c).transpose(0, 2, 1, 3)
  return k, rng.normal(size=(n, c)) * 0.5, rng.integers(0, c, n).astype(np.int32)


@pytest.mark.parametrize('n,p,dt', [(10, 2, 1), (10, 3, 1), (9, 3, 1), (9, 3, 3), (10, 2, 2)])
def test_sde_epoch_noise_has_the_moments_of_reshuffled_batches(n, p, dt):
  """The move over the first p steps of an epoch (B = 3, E = ⌊N/3⌋ = 3 steps).

  At a small learning rate the move is η Σ_j w_j Θ[:, j] r_j with the sample
  weights w of the batches. Reshuffled once an epoch, two batches of an epoch
  have weight covariance -ρ = -B/(N - B) times one batch's, so p steps have
  (p - ρ p (p - 1)) times one step's covariance: 0 for a whole epoch when B
  divides N (N = 9), where i.i.d. batches have p times. One Euler–Maruyama step
  over dt = p SGD steps has the same moments.
  """
  k, f0, y = _problem(n)
  c = f0.shape[1]
  b, draws = 3, 40_000
  lr = 1e-4 * n / np.linalg.eigvalsh(dynamics._flat(k))[-1]
  rng = np.random.default_rng(0)
  with enable_x64():
    keys = jax.random.split(jax.random.key(1), draws)
    kw = dict(batch_size=b, loss='cross_entropy', eval_every=p, dt=dt)
    moves = {}
    for sampling in ('epoch', 'iid'):
      _, f_sde, _ = dynamics.simulate_sde(keys, np.full(p, lr), k, f0, y, sampling=sampling, **kw)
      moves['sde_' + sampling] = (np.asarray(f_sde) - f0).reshape(draws, -1) / lr
    orders = np.stack([rng.permutation(n)[:p * b].reshape(p, b) for _ in range(draws)])
    _, f_sgd, _ = dynamics.simulate_sgd(orders, np.full(p, lr), k, f0, y, loss='cross_entropy',
                                        eval_every=p)
    moves['exact_epoch'] = (np.asarray(f_sgd) - f0).reshape(draws, -1) / lr
  r = np.exp(f0) / np.exp(f0).sum(1, keepdims=True) - np.eye(c)[y]
  v = -np.einsum('ijcd,jd->jic', k, r).reshape(n, n * c)  # v_j = -Θ[:, j] r_j
  one_step = (n - b) / (n - 1) / b * np.cov(v.T, bias=True)
  rho = b / (n - b)
  expected = {'sde_iid': p * one_step, 'sde_epoch': (p - rho * p * (p - 1)) * one_step,
              'exact_epoch': (p - rho * p * (p - 1)) * one_step}
  scale = np.abs(one_step).max()
  for name, d in moves.items():
    np.testing.assert_allclose(d.mean(0), p * v.mean(0), atol=0.02 * np.abs(v.mean(0)).max(),
                               err_msg=name)
    np.testing.assert_allclose(np.cov(d.T, bias=True), expected[name], atol=0.03 * p * scale,
                               err_msg=name)


def test_sde_epoch_noise_is_refused_by_name_and_vanishes_at_full_batch():
  k, f0, y = _problem(6)
  keys = jax.random.split(jax.random.key(0), 3)
  kw = dict(loss='mse', eval_every=4)
  with pytest.raises(ValueError, match=r"unknown sampling 'epochs'"):
    dynamics.simulate_sde(keys, np.full(8, 0.1), k, f0, y, batch_size=2, sampling='epochs', **kw)
  with enable_x64():
    full, _, _ = dynamics.simulate_sde(keys, np.full(8, 0.1), k, f0, y, batch_size=6,
                                       sampling='epoch', **kw)
    ode, _, _ = dynamics.simulate_full_batch(np.full(8, 0.1), k, f0, y, **kw)
  np.testing.assert_allclose(full['train_loss'], np.repeat(ode['train_loss'], 3, 0), rtol=1e-12)


def test_noise_model_script_runs_end_to_end(tmp_path):
  """experiments/noise_model.py at toy sizes: every kind, its table and JSON."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'noise.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.noise_model', '--n=30', '--classes=3', '--features=30',
       '--steps=20', '--eval_every=10', '--paths=4', '--batch_sizes=5', '--momenta=0,0.9',
       '--losses=mse', '--lr_fracs=0.05', f'--out={out}'],
      cwd=root, capture_output=True, text=True, check=True)
  assert 'sde_epoch' in proc.stdout
  [r0, r1] = json.loads(out.read_text())['results']
  assert (r0['momentum'], r1['momentum']) == (0.0, 0.9)
  for kind in ('epoch', 'iid', 'sde', 'sde_epoch'):
    assert not r0[kind]['diverged'] and len(r0[kind]['mean']) == 3
