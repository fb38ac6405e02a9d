"""The empirical NTK against J Jᵀ from jax.jacrev, across implementations."""

import os

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from ntk_time import models
from ntk_time import ntk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def net():
  model = models.create_model('ResNetTiny', 3)
  variables = models.init_variables(model, jax.random.key(1), (8, 8, 1))
  # Non-trivial running statistics, so that frozen BatchNorm is really exercised.
  stats = jax.tree.map(lambda v: v + 0.3 * jax.random.uniform(jax.random.key(2), v.shape),
                       variables['batch_stats'])
  apply_fn = models.make_apply_fn(model, stats)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
  xt = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
  return apply_fn, variables['params'], x, xt


def _jjt(apply_fn, params, x1, x2):
  flat, unravel = ravel_pytree(params)
  j1 = jax.jacrev(lambda p: apply_fn(unravel(p), x1))(flat)  # [N1, C, P]
  j2 = jax.jacrev(lambda p: apply_fn(unravel(p), x2))(flat)
  return np.einsum('acp,bdp->abcd', j1, j2)


@pytest.mark.parametrize('implementation', ntk.IMPLEMENTATIONS)
@pytest.mark.parametrize('block_size', [2, 100])
def test_kernel_equals_jjt(net, implementation, block_size):
  apply_fn, params, x, xt = net
  k_tt, k_st = ntk.empirical_ntk(apply_fn, params, x, xt, implementation=implementation,
                                 block_size=block_size)
  assert k_tt.shape == (6, 6, 3, 3) and k_st.shape == (4, 6, 3, 3)
  scale = np.abs(_jjt(apply_fn, params, x, x)).max()
  np.testing.assert_allclose(k_tt, _jjt(apply_fn, params, x, x), atol=1e-5 * scale)
  np.testing.assert_allclose(k_st, _jjt(apply_fn, params, xt, x), atol=1e-5 * scale)
  report = ntk.check_kernel(k_tt)
  assert report['min_eig'] > -1e-4 * report['max_eig'] and report['asymmetry'] < 1e-5


@pytest.mark.parametrize('implementation', ntk.IMPLEMENTATIONS)
def test_traced_kernel_is_mean_over_classes(net, implementation):
  apply_fn, params, x, xt = net
  full, full_st = ntk.empirical_ntk(apply_fn, params, x, xt)
  tr, tr_st = ntk.empirical_ntk(apply_fn, params, x, xt, implementation=implementation,
                                traced=True, block_size=3)
  np.testing.assert_allclose(tr, np.trace(full, axis1=2, axis2=3) / 3, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(tr_st, np.trace(full_st, axis1=2, axis2=3) / 3, rtol=1e-5, atol=1e-6)


def test_kernel_is_batch_independent(net):
  """With frozen BatchNorm the kernel of a sample does not depend on its block."""
  apply_fn, params, x, _ = net
  k_all, _ = ntk.empirical_ntk(apply_fn, params, x)
  k_sub, _ = ntk.empirical_ntk(apply_fn, params, x[:2])
  np.testing.assert_allclose(k_all[:2, :2], k_sub, rtol=1e-5, atol=1e-6)


def test_jvp_is_j_times_tangent(net):
  apply_fn, params, x, _ = net
  flat, unravel = ravel_pytree(params)
  j = jax.jacrev(lambda p: apply_fn(unravel(p), x))(flat)
  np.testing.assert_allclose(ntk.jvp(apply_fn, params, params, x), j @ flat, rtol=1e-4, atol=1e-5)


def test_linearize_refuses_what_does_not_fit(net):
  apply_fn, params, x, xt = net
  with pytest.raises(MemoryError, match=r'needs about .* GiB.*memory_gb=1e-06'):
    ntk.linearize(apply_fn, params, x, xt, memory_gb=1e-6, progress=False)


def test_check_kernel_rejects_non_psd():
  k = np.zeros((2, 2, 1, 1))
  k[:, :, 0, 0] = [[1.0, 2.0], [2.0, 1.0]]
  with pytest.raises(ValueError, match='not PSD: smallest eigenvalue -1'):
    ntk.check_kernel(k)
  k[0, 1, 0, 0] = 0.0
  with pytest.raises(ValueError, match='not symmetric'):
    ntk.check_kernel(k)


def test_unknown_implementation(net):
  apply_fn, params, x, _ = net
  with pytest.raises(ValueError, match="'nt_structured'"):
    ntk.empirical_ntk(apply_fn, params, x, implementation='nt_structured')


def test_sketched_kernel_is_an_unbiased_estimate_that_improves_with_k(net):
  apply_fn, params, x, xt = net
  exact = ntk.flatten(_jjt(apply_fn, params, x, x))
  norm = np.linalg.norm(exact)

  def sketched(dim, seed):
    k, k_st = ntk.empirical_ntk(apply_fn, params, x, xt, block_size=4, sketch_dim=dim,
                                sketch_key=jax.random.key(seed))
    assert k_st.shape == (4, 6, 3, 3)
    return ntk.flatten(k)

  errors = {dim: np.linalg.norm(sketched(dim, 0) - exact) / norm for dim in (16, 256, 4096)}
  assert errors[16] > errors[256] > errors[4096] and errors[4096] < 0.05, errors
  # Unbiased: the mean of 16 independent k = 16 sketches is ~4x closer than one of them.
  mean = np.mean([sketched(16, s) for s in range(16)], axis=0)
  assert np.linalg.norm(mean - exact) / norm < 0.5 * errors[16]
  # Same key, same sketch: train and test blocks are projected alike.
  np.testing.assert_array_equal(sketched(16, 3), sketched(16, 3))
  with pytest.raises(ValueError, match='sketch_dim=8 needs the direct implementation'):
    ntk.empirical_ntk(apply_fn, params, x, implementation='nt_ntvp', sketch_dim=8,
                      sketch_key=jax.random.key(0))


def test_kernel_and_simulators_on_four_devices_equal_one_device(tmp_path):
  """The same script in a 1-device and a 4-device process (host devices): 11 samples in
  blocks of 4 and 6 paths, so the padding to a multiple of the devices is exercised."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'run.py'
  script.write_text('''
import sys
sys.path.insert(0, %r)
import jax, numpy as np
from ntk_time import dynamics, models, ntk, sgd
model = models.create_model('ResNetTiny', 3, num_filters=4)
v = models.init_variables(model, jax.random.key(0), (8, 8, 1))
f = models.make_apply_fn(model, v['batch_stats'])
rng = np.random.default_rng(0)
x = rng.normal(size=(11, 8, 8, 1)).astype(np.float32)
xt = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
k, k_st = ntk.empirical_ntk(f, v['params'], x, xt, block_size=4)
fx0, y = ntk.outputs(f, v['params'], x), rng.integers(0, 3, 11)
lrs = np.full(20, 0.5)
sde, _, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(1), 6), lrs, k, fx0, y,
                                  batch_size=4, loss='cross_entropy', eval_every=5)
orders = np.stack([sgd.batch_order(jax.random.key(s), 11, 4, 20) for s in range(6)])
exact, _, _ = dynamics.simulate_sgd(orders, lrs, k, fx0, y, loss='cross_entropy', eval_every=5)
np.savez(sys.argv[1], devices=len(jax.local_devices()), k=k, k_st=k_st,
         sde=sde['train_loss'], exact=exact['train_loss'])
''' % ROOT)
  out = {}
  for d in (1, 4):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={d}',
               JAX_PLATFORMS='cpu')
    path = tmp_path / f'{d}.npz'
    run = subprocess.run([sys.executable, str(script), str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out[d] = np.load(path)
  assert out[1]['devices'] == 1 and out[4]['devices'] == 4
  for name in ('k', 'k_st', 'sde', 'exact'):
    a, b = out[1][name], out[4][name]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * np.abs(a).max(), err_msg=name)
