"""The empirical NTK against J Jᵀ from jax.jacrev, across implementations."""

import os

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_time import compat
from ntk_time import models
from ntk_time import ntk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
  import neural_tangents  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  _NO_NT = ''
except ImportError as e:  # absent, or too old for this jax (0.6.5 needs jax <= 0.5.x)
  _NO_NT = f'neural-tangents is not importable ({e})'
# The nt_* implementations skip without neural-tangents; 'direct' always runs.
_IMPLEMENTATIONS = [pytest.param(i, marks=pytest.mark.skipif(bool(_NO_NT), reason=_NO_NT))
                    if i.startswith('nt_') else i for i in ntk.IMPLEMENTATIONS]


@pytest.fixture(scope='module')
def net(tiny_resnet, every_parameter_has_gradient):
  # Random BatchNorm (scales, biases, running statistics): a fresh net's zero bn2 scale
  # would leave 80% of its parameters without a gradient, unseen by every kernel test.
  model, variables = tiny_resnet(3, seed=1)
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 8, 8, 1)).astype(np.float32)
  xt = rng.normal(size=(4, 8, 8, 1)).astype(np.float32)
  every_parameter_has_gradient(apply_fn, variables['params'], x)
  return apply_fn, variables['params'], x, xt


def _jjt(apply_fn, params, x1, x2):
  flat, unravel = ravel_pytree(params)
  j1 = jax.jacrev(lambda p: apply_fn(unravel(p), x1))(flat)  # [N1, C, P]
  j2 = jax.jacrev(lambda p: apply_fn(unravel(p), x2))(flat)
  # Every parameter enters the reference kernel: no column of J is identically zero.
  for j in (j1, j2):
    cols = np.linalg.norm(np.asarray(j).reshape(-1, flat.size), axis=0)
    assert np.all(cols > 1e-7 * cols.max()), f'{np.sum(cols <= 1e-7 * cols.max())} dead columns'
  return np.einsum('acp,bdp->abcd', j1, j2)


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
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


@pytest.mark.parametrize('implementation', _IMPLEMENTATIONS)
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


def test_check_kernel_beyond_1000_rows_is_lanczos_and_agrees_with_eigvalsh(monkeypatch):
  """[400, 400, 3, 3] (1,200 rows, known spectrum of rank 300): the extreme eigenvalues by
  Lanczos are the known ones, a negative eigenvalue of -2e-3 λ_max is found, and no
  O((N·C)³) decomposition of the whole kernel runs."""
  rng = np.random.default_rng(3)
  n, c = 400, 3
  q, _ = np.linalg.qr(rng.normal(size=(n * c, 301)))  # orthonormal columns
  lam = 1000.0 / np.arange(1, 301)  # the non-zero spectrum, λ_max = 1000; 900 zeros
  good = (q[:, :300] * lam) @ q[:, :300].T
  bad = good - 2.0 * np.outer(q[:, 300], q[:, 300])  # one eigenvalue -2e-3 λ_max
  as_kernel = lambda m: m.reshape(n, c, n, c).transpose(0, 2, 1, 3).astype(np.float32)
  eigvalsh = np.linalg.eigvalsh

  def small_only(m, *args, **kwargs):
    assert len(m) <= 1000, f'a full eigendecomposition of {len(m)} rows'
    return eigvalsh(m, *args, **kwargs)
  monkeypatch.setattr(np.linalg, 'eigvalsh', small_only)
  report = ntk.check_kernel(as_kernel(good))
  assert set(report) == {'asymmetry', 'min_eig', 'max_eig'}
  assert report['max_eig'] == pytest.approx(1000.0, rel=1e-5)
  assert abs(report['min_eig']) < 1e-4 * 1000.0 and report['asymmetry'] < 1e-6
  with pytest.raises(ValueError, match=r'not PSD: smallest eigenvalue -2\.00\de\+00'):
    ntk.check_kernel(as_kernel(bad))
  k_bad = as_kernel(bad)
  k_bad[0, 1, 0, 0] += 10.0
  with pytest.raises(ValueError, match='not symmetric'):
    ntk.check_kernel(k_bad)
  k_bad[0, 1, 0, 0] = np.nan
  with pytest.raises(ValueError, match='non-finite'):
    ntk.check_kernel(k_bad)
  # The class-traced [N, N] kernel and ≤ 1,000 rows (dense) give the same numbers.
  small = good[:900, :900]
  traced = ntk.check_kernel(small)
  assert traced['max_eig'] == pytest.approx(eigvalsh(small)[-1], rel=1e-9)


def test_relative_drift_against_the_known_kernels_of_a_two_layer_net(two_layer_linear):
  """f = Wᵀ M x + b has Θ = (X Xᵀ) ⊗ WᵀW + (Φ Φᵀ + 1) ⊗ I_C exactly (Φ = X Mᵀ). Moved to
  (β M, α W), the drift ‖Θ1 - Θ0‖_F / ‖Θ0‖_F of the kernels computed at the two weights is
  the one of these closed forms."""
  t = two_layer_linear()
  alpha, beta = 1.5, 0.8
  w1 = {'M': beta * t.w0['M'], 'head': {'kernel': alpha * t.w0['head']['kernel'],
                                        'bias': t.w0['head']['bias'] + 0.3}}

  def closed_form(w):
    phi, c = t.x_train @ w['M'].T, w['head']['kernel'].shape[1]
    backbone = np.einsum('ij,cd->ijcd', t.x_train @ t.x_train.T,
                         w['head']['kernel'].T @ w['head']['kernel'])
    return backbone + np.einsum('ij,cd->ijcd', phi @ phi.T + 1, np.eye(c))
  k0, _ = ntk.empirical_ntk(t.apply_fn, t.w0, t.x_train)  # float32
  k1, _ = ntk.empirical_ntk(t.apply_fn, w1, t.x_train)
  np.testing.assert_allclose(k0, closed_form(t.w0), rtol=1e-5, atol=1e-5)
  want = np.linalg.norm(closed_form(w1) - closed_form(t.w0)) / np.linalg.norm(closed_form(t.w0))
  assert 0.1 < want < 10
  assert ntk.relative_drift(k0, k1) == pytest.approx(want, rel=1e-5)
  # The same on class-traced kernels, and its known values.
  trace = lambda k: np.trace(k, axis1=2, axis2=3) / 3
  assert ntk.relative_drift(trace(k0), trace(k1)) == pytest.approx(
      np.linalg.norm(trace(closed_form(w1) - closed_form(t.w0)))
      / np.linalg.norm(trace(closed_form(t.w0))), rel=1e-5)
  assert ntk.relative_drift(k0, k0) == 0.0
  assert ntk.relative_drift(k0, 3 * k0) == pytest.approx(2.0)
  assert ntk.relative_drift(k0, -k0) == pytest.approx(2.0)  # not a ratio of norms


def test_unknown_implementation(net):
  apply_fn, params, x, _ = net
  with pytest.raises(ValueError, match="'nt_structured'"):
    ntk.empirical_ntk(apply_fn, params, x, implementation='nt_structured')


@pytest.mark.parametrize('kind', ntk.SKETCH_KINDS)
def test_sketched_kernel_improves_with_k_and_projects_every_block_alike(net, kind):
  apply_fn, params, x, xt = net
  exact = ntk.flatten(_jjt(apply_fn, params, x, x))
  norm = np.linalg.norm(exact)

  def sketched(dim, seed, block_size=4, x_test=xt):
    k, k_st = ntk.empirical_ntk(apply_fn, params, x, x_test, block_size=block_size,
                                sketch_dim=dim, sketch_key=jax.random.key(seed),
                                sketch_kind=kind)
    assert k_st.shape == (len(x_test), 6, 3, 3)
    return k, k_st

  errors = {dim: np.linalg.norm(ntk.flatten(sketched(dim, 0)[0]) - exact) / norm
            for dim in (16, 256, 4096)}
  assert errors[16] > errors[256] > errors[4096] and errors[4096] < 0.05, errors
  # Same key, same sketch, whatever the blocks: the test samples' kernel against the
  # train samples equals the train kernel when they are the same samples.
  k, k_st = sketched(16, 3, block_size=4, x_test=x)
  np.testing.assert_array_equal(k, sketched(16, 3, block_size=4, x_test=x)[0])
  scale = np.abs(k).max()
  np.testing.assert_allclose(k_st, k, atol=1e-5 * scale)
  np.testing.assert_allclose(sketched(16, 3, block_size=100, x_test=x)[0], k, atol=1e-5 * scale)
  assert np.abs(sketched(16, 4, x_test=x)[0] - k).max() > 1e-2 * scale  # another key, another Π
  with pytest.raises(ValueError, match='sketch_dim=8 needs the direct implementation'):
    ntk.empirical_ntk(apply_fn, params, x, implementation='nt_ntvp', sketch_dim=8,
                      sketch_key=jax.random.key(0), sketch_kind=kind)


def test_unknown_sketch_kind(net):
  apply_fn, params, x, _ = net
  with pytest.raises(ValueError, match="unknown sketch_kind='count'"):
    ntk.empirical_ntk(apply_fn, params, x, sketch_dim=8, sketch_key=jax.random.key(0),
                      sketch_kind='count')


_SEEDS = 300  # sketches per Monte-Carlo estimate below


@pytest.fixture
def optimized():
  """XLA's optimisations back on (conftest turns them off for fast compiles): the
  Monte-Carlo tests below draw 10^8 Gaussian numbers, 7× slower without them."""
  before = jax.config.read('jax_disable_most_optimizations')
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(scope='module')
def explicit_jacobian():
  """J [b=4, C=2, P] in float64 with P just under two of the Gaussian sketch's row
  chunks (so the last one is padded), column scales over a decade in random order
  and a common offset: columns that correlate as a network's do, so that a sketch
  without random signs, or one repeating a chunk's rows, is biased."""
  rng = np.random.default_rng(0)
  p = 2 * ntk.SKETCH_CHUNK - 100
  return (rng.normal(size=(4, 2, p)) + 0.5) * rng.permutation(np.geomspace(1.0, 0.1, p))


def _sketched_kernels(j, dim, kind):
  """(JΠ)(JΠ)ᵀ [_SEEDS, b·C, b·C] for _SEEDS keys, in float64, and Θ = J Jᵀ."""
  with compat.enable_x64():
    jj = jnp.asarray(j)

    def one(key):
      s = ntk.sketch_fn(j.shape[-1], dim, key, kind)(jj).reshape(-1, dim)
      return s @ s.T
    keys = jax.random.split(jax.random.key(dim), _SEEDS)
    kernels = np.asarray(jax.lax.map(one, keys))
  flat = j.reshape(-1, j.shape[-1])
  return kernels, flat @ flat.T


def _expected_squared_error(j, dim, kind):
  """E‖(JΠ)(JΠ)ᵀ − J Jᵀ‖²_F (sketch_fn's docstring)."""
  flat = j.reshape(-1, j.shape[-1])
  theta = flat @ flat.T
  err = np.trace(theta) ** 2 + np.sum(theta**2)
  if kind == 'sparse_sign':
    err -= 2 * np.sum(np.sum(flat**2, axis=0) ** 2)
  return err / dim


@pytest.mark.parametrize('kind', ntk.SKETCH_KINDS)
def test_sketch_is_unbiased(explicit_jacobian, kind, optimized):  # pylint: disable=unused-argument
  """The mean of 300 sketched kernels is J Jᵀ within its measured standard error:
  ‖mean − Θ‖²_F over the sum of the entries' squared standard errors is about 1
  (a χ² over the 36 distinct entries, divided by its mean)."""
  kernels, theta = _sketched_kernels(explicit_jacobian, 8, kind)
  sq_standard_error = np.sum(np.var(kernels, axis=0, ddof=1)) / _SEEDS
  ratio = np.sum((kernels.mean(axis=0) - theta) ** 2) / sq_standard_error
  assert ratio < 2.5, ratio


@pytest.mark.parametrize('kind', ntk.SKETCH_KINDS)
def test_sketch_error_falls_as_one_over_root_k(explicit_jacobian, kind, optimized):  # pylint: disable=unused-argument
  """The mean squared error over 300 sketches equals its closed form ∝ 1/k, within 4
  standard errors of that mean, at k = 4, 16, 64: the error halves when k is ×4."""
  rms = []
  for dim in (4, 16, 64):
    kernels, theta = _sketched_kernels(explicit_jacobian, dim, kind)
    sq = np.sum((kernels - theta) ** 2, axis=(1, 2))
    expected = _expected_squared_error(explicit_jacobian, dim, kind)
    assert abs(sq.mean() - expected) < 4 * sq.std(ddof=1) / np.sqrt(_SEEDS), (
        dim, sq.mean(), expected)
    rms.append(np.sqrt(sq.mean()))
  np.testing.assert_allclose(np.array(rms[:-1]) / rms[1:], 2.0, rtol=0.15)


_DEVICES_SCRIPT = '''
import sys
import jax
from ntk_time import devices
if len(sys.argv) > 2:  # process id, process count, coordinator port
  devices.initialize(f'localhost:{sys.argv[4]}', int(sys.argv[3]), int(sys.argv[2]))
import numpy as np
from ntk_time import dynamics, models, ntk, sgd
sys.path.insert(0, sys.path[0] + '/tests')
from conftest import randomize_batchnorm  # every parameter with a gradient
model = models.create_model('ResNetTiny', 3, num_filters=4)
v = randomize_batchnorm(models.init_variables(model, jax.random.key(0), (8, 8, 1)),
                        jax.random.key(5))
f = models.make_apply_fn(model, v['batch_stats'])
rng = np.random.default_rng(0)
x = rng.normal(size=(11, 8, 8, 1)).astype(np.float32)
xt = rng.normal(size=(5, 8, 8, 1)).astype(np.float32)
params = v['params']
if jax.process_index() == 1:  # other weights than process 0's: linearize must use process 0's
  params = jax.tree.map(lambda a: a + 0.1, params)
lin = ntk.linearize(f, params, x, xt, block_size=4, progress=False)
sketch, _ = ntk.empirical_ntk(f, v['params'], x, block_size=4, sketch_dim=64,
                              sketch_key=jax.random.key(2))
y = rng.integers(0, 3, 11)
lrs = np.full(20, 0.5)
sde, _, _ = dynamics.simulate_sde(jax.random.split(jax.random.key(1), 6), lrs, lin.k_train_train,
                                  lin.fx_train_0, y, batch_size=4, loss='cross_entropy',
                                  eval_every=5)
orders = np.stack([sgd.batch_order(jax.random.key(s), 11, 4, 20) for s in range(6)])
exact, _, _ = dynamics.simulate_sgd(orders, lrs, lin.k_train_train, lin.fx_train_0, y,
                                    loss='cross_entropy', eval_every=5)
np.savez(sys.argv[1], devices=len(jax.devices()), processes=jax.process_count(),
         k=lin.k_train_train, k_st=lin.k_test_train, sketch=sketch, sde=sde['train_loss'],
         exact=exact['train_loss'])
'''


def _run_devices_script(tmp_path, name, devices_per_process, processes=1):
  """_DEVICES_SCRIPT in `processes` processes of `devices_per_process` host devices each;
  the outputs of each process."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  script = tmp_path / 'run.py'
  script.write_text(_DEVICES_SCRIPT)
  # ntk_time from this checkout, like the tests' own (also where another one is installed),
  # and the tests' conftest helpers.
  path = os.pathsep.join(d for d in (ROOT, os.path.join(ROOT, 'tests'),
                                     os.environ.get('PYTHONPATH')) if d)
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=path,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices_per_process}')
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = s.getsockname()[1]
  paths = [tmp_path / f'{name}_{i}.npz' for i in range(processes)]
  args = [[sys.executable, str(script), str(p)] +
          ([str(i), str(processes), str(port)] if processes > 1 else [])
          for i, p in enumerate(paths)]
  procs = [subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for a in args]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  return [np.load(p) for p in paths]


def _assert_same_results(a, b):
  for name in ('k', 'k_st', 'sketch', 'sde', 'exact'):
    np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-6 * np.abs(a[name]).max(),
                               err_msg=name)


def test_kernel_and_simulators_on_several_devices_equal_one_device(tmp_path):
  """The same script on 1 device, on 4 host devices, and in two processes of 2 host
  devices each (jax.distributed on localhost, gloo; process 1 starts from other
  weights, which linearize replaces by process 0's): 11 samples in blocks of 4 and 6
  paths, so the padding to a multiple of the devices is exercised."""
  [one] = _run_devices_script(tmp_path, 'one', 1)
  [four] = _run_devices_script(tmp_path, 'four', 4)
  two_hosts = _run_devices_script(tmp_path, 'hosts', 2, processes=2)
  assert (one['devices'], four['devices']) == (1, 4)
  _assert_same_results(one, four)
  for out in two_hosts:
    assert (out['devices'], out['processes']) == (4, 2)
    _assert_same_results(one, out)
