"""The empirical NTK against J Jᵀ from jax.jacrev, across implementations."""

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

from ntk_time import models
from ntk_time import ntk


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
