"""The simulators map their batched pytree (orders or paths) over the shared one (issue 13)."""

import jax
import numpy as np

from ntk_time import dynamics
from ntk_time import sgd
from ntk_time.compat import enable_x64


def _problem(n=8, c=3, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n * c, 3 * n * c)) / np.sqrt(n * c)
  k = (a @ a.T).reshape(n, c, n, c).transpose(0, 2, 1, 3)
  return k, rng.normal(size=(n, c)) * 0.5, rng.integers(0, c, n).astype(np.int32), rng


def test_each_order_and_path_is_simulated_as_if_alone():
  """A batched entry depends on its own order / key and hyper-parameters only."""
  k, f0, y, rng = _problem()
  n, c = f0.shape
  lrs = np.full(12, 0.3)
  kw = dict(loss='cross_entropy', eval_every=4, weight_decay=0.1, jw0_train=rng.normal(size=(n, c)))
  with enable_x64():
    orders = np.stack([sgd.batch_order(jax.random.key(s), n, 3, 12) for s in range(3)])
    together, f_all, _ = dynamics.simulate_sgd(orders, lrs, k, f0, y, momentum=0.5, **kw)
    for s in range(3):
      alone, f_one, _ = dynamics.simulate_sgd(orders[s:s + 1], lrs, k, f0, y, momentum=0.5, **kw)
      np.testing.assert_allclose(f_one[0], f_all[s], rtol=1e-12)
      np.testing.assert_allclose(alone['train_loss'][0], together['train_loss'][s], rtol=1e-12)
    keys = jax.random.split(jax.random.key(1), 3)
    bs, ms = np.array([2, 4, 8]), np.array([0.0, 0.5, 0.9])
    _, f_all, _ = dynamics.simulate_sde(keys, lrs, k, f0, y, batch_size=bs, momentum=ms, **kw)
    for s in range(3):
      _, f_one, _ = dynamics.simulate_sde(keys[s:s + 1], lrs, k, f0, y, batch_size=bs[s],
                                          momentum=ms[s], **kw)
      np.testing.assert_allclose(f_one[0], f_all[s], rtol=1e-12)
  assert np.abs(f_all[0] - f_all[1]).max() > 1e-3  # the paths really differ


def test_minibatch_simulator_with_a_traced_kernel_equals_the_expanded_kernel():
  """K [N, N] replayed as K equals K ⊗ I_C expanded to [N, N, C, C], order by order."""
  rng = np.random.default_rng(7)
  n, nt_, c = 9, 4, 3
  x = rng.normal(size=(n + nt_, 20))
  k = x @ x[:n].T / 20
  eye = np.eye(c)
  f0, ft0 = rng.normal(size=(n, c)) * 0.3, rng.normal(size=(nt_, c)) * 0.3
  y, yt = rng.integers(0, c, n), rng.integers(0, c, nt_)
  kw = dict(loss='cross_entropy', eval_every=5, momentum=0.5, nesterov=True, weight_decay=0.1,
            jw0_train=rng.normal(size=(n, c)), fx_test_0=ft0, y_test=yt)
  lrs = np.full(20, 0.7)
  with enable_x64():
    orders = np.stack([sgd.batch_order(jax.random.key(s), n, 3, 20, 'iid') for s in range(3)])
    traced, f_tr, ft_tr = dynamics.simulate_sgd(orders, lrs, k[:n], f0, y, k_test_train=k[n:],
                                                **kw)
    full, f_full, ft_full = dynamics.simulate_sgd(
        orders, lrs, k[:n, :, None, None] * eye, f0, y,
        k_test_train=k[n:, :, None, None] * eye, **kw)
    alone, _, _ = dynamics.simulate_full_batch(lrs, k[:n], f0, y, **kw)
    alone_full, _, _ = dynamics.simulate_full_batch(lrs, k[:n, :, None, None] * eye, f0, y, **kw)
  np.testing.assert_allclose(f_tr, f_full, rtol=1e-10)
  np.testing.assert_allclose(ft_tr, ft_full, rtol=1e-10)
  np.testing.assert_allclose(traced['test_loss'], full['test_loss'], rtol=1e-10)
  np.testing.assert_allclose(alone['train_loss'], alone_full['train_loss'], rtol=1e-10)
  assert np.abs(f_tr - f0).max() > 0.1  # it moved
