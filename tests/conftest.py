import jax
import numpy as np
import pytest

# Fast compiles: the tests check numbers, not speed.
jax.config.update('jax_disable_most_optimizations', True)

from ntk_time import data  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture
def key():
  return jax.random.key(0)


def randomize_batchnorm(variables, key):
  """A copy of {'params', 'batch_stats'} with every BatchNorm entry random.

  A fresh ResNet is a poor test bed: BasicBlock initialises bn2's scale to zero
  (the usual ResNet trick), which makes the Jacobian of conv1, bn1 and conv2
  (about 80% of ResNetTiny's parameters) exactly zero, and fresh BatchNorm is the
  identity (scale 1, bias 0, mean 0, var 1), which hides a mix-up of its entries.
  Like tests/test_convert.py for torchvision: scales U(0.5, 1.5), biases
  N(0, 0.2), running means N(0, 0.2), running variances U(0.5, 2).
  """
  import flax  # pylint: disable=g-import-not-at-top
  draw = {'scale': lambda k, s: jax.random.uniform(k, s, minval=0.5, maxval=1.5),
          'bias': lambda k, s: 0.2 * jax.random.normal(k, s),
          'mean': lambda k, s: 0.2 * jax.random.normal(k, s),
          'var': lambda k, s: jax.random.uniform(k, s, minval=0.5, maxval=2.0)}
  out = {}
  for c, (collection, tree) in enumerate(sorted(variables.items())):
    flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))
    new = {}
    for i, (path, v) in enumerate(sorted(flat.items())):
      # BatchNorm modules are those with a 'scale' (params) or running statistics.
      is_bn = collection == 'batch_stats' or (path[:-1] + ('scale',)) in flat
      if is_bn and path[-1] in draw:
        k = jax.random.fold_in(jax.random.fold_in(key, c), i)
        v = draw[path[-1]](k, np.shape(v)).astype(np.asarray(v).dtype)
      new[path] = v
    out[collection] = flax.traverse_util.unflatten_dict(new)
  return out


def _tiny_resnet(num_classes=3, seed=0, image_shape=(8, 8, 1), **overrides):
  """(model, variables) of a ResNetTiny whose every parameter has a gradient.

  Fresh weights from `seed`, then `randomize_batchnorm`; see
  `_assert_every_parameter_has_gradient`.
  """
  from ntk_time import models  # pylint: disable=g-import-not-at-top
  model = models.create_model('ResNetTiny', num_classes, **overrides)
  variables = models.init_variables(model, jax.random.key(seed), image_shape)
  return model, randomize_batchnorm(variables, jax.random.key(seed + 1000))


def jacobian_column_norms(apply_fn, params, x):
  """{parameter path: [size] norms of its columns of J = ∂F/∂w ([N·C, P])}."""
  import flax  # pylint: disable=g-import-not-at-top
  jac = jax.jacrev(lambda p: apply_fn(p, x))(params)  # leaves [N, C, *shape]
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(jac), sep='/')
  n_out = np.prod(np.shape(apply_fn(params, x)))
  return {k: np.linalg.norm(np.asarray(v).reshape(n_out, -1), axis=0) for k, v in flat.items()}


def _assert_every_parameter_has_gradient(apply_fn, params, x):
  """No parameter's column of J is (numerically) zero: the kernel sees every weight."""
  norms = jacobian_column_norms(apply_fn, params, x)
  top = max(float(v.max()) for v in norms.values())
  dead = {k: int(np.sum(v <= 1e-7 * top)) for k, v in norms.items() if np.any(v <= 1e-7 * top)}
  assert not dead, f'parameters with an identically zero Jacobian column: {dead}'


@pytest.fixture(scope='session')
def tiny_resnet():
  """The factory `_tiny_resnet(num_classes, seed, image_shape, **overrides)`."""
  return _tiny_resnet


@pytest.fixture(scope='session')
def every_parameter_has_gradient():
  """The check `_assert_every_parameter_has_gradient(apply_fn, params, x)`."""
  return _assert_every_parameter_has_gradient


class LinearTask:
  """A data.Task-like problem for a *linear* model f(w, x_i) = x_i w, x_i: [C, P]."""

  def __init__(self, n=12, n_test=5, c=3, p=7, seed=0):
    rng = np.random.default_rng(seed)
    self.x_train = rng.normal(size=(n, c, p))
    self.y_train = rng.integers(0, c, n).astype(np.int32)
    self.x_test = rng.normal(size=(n_test, c, p))
    self.y_test = rng.integers(0, c, n_test).astype(np.int32)
    self.w0 = {'w': rng.normal(size=(p,)) * 0.3}

  @staticmethod
  def apply_fn(params, x):
    return jax.numpy.einsum('ncp,p->nc', x, params['w'])

  def kernel(self, x1, x2):  # Θ[i, j, c, d] = x1_i[c] · x2_j[d]
    return np.einsum('icp,jdp->ijcd', x1, x2)


@pytest.fixture
def linear_task():
  return LinearTask()


class TwoLayerLinear:
  """f(x) = Wᵀ diag(s) M x + b, s fixed: features diag(s) M x are linear in M, with the
  feature kernel (x_iᵀ x_j) diag(s²) exactly (isotropic for s = 1, the default)."""

  def __init__(self, n=10, n_test=4, p=6, d=4, c=3, seed=0, feature_scales=None):
    rng = np.random.default_rng(seed)
    self.x_train, self.x_test = rng.normal(size=(n, p)), rng.normal(size=(n_test, p))
    self.y_train = rng.integers(0, c, n).astype(np.int32)
    self.y_test = rng.integers(0, c, n_test).astype(np.int32)
    self.w0 = {'M': rng.normal(size=(d, p)) * 0.5,
               'head': {'kernel': rng.normal(size=(d, c)) * 0.5, 'bias': np.zeros(c)}}
    self.scales = np.ones(d) if feature_scales is None else np.asarray(feature_scales, float)

  def features(self, params, x):
    return x @ params['M'].T * self.scales

  def apply_fn(self, params, x):
    return self.features(params, x) @ params['head']['kernel'] + params['head']['bias']


@pytest.fixture
def two_layer_linear():
  """The class TwoLayerLinear (instantiate with its keyword arguments)."""
  return TwoLayerLinear


@pytest.fixture(scope='session')
def digits_source():
  return data.load_source('digits')


@pytest.fixture(scope='session')
def smoke_checkpoint(tmp_path_factory):
  """The smoke config's pretrained checkpoint, made once for every end-to-end test."""
  from ntk_time import pretrain  # pylint: disable=g-import-not-at-top
  from ntk_time.configs import smoke  # pylint: disable=g-import-not-at-top
  # <root>/pretrain/checkpoint.msgpack: <root> is also a workdir where it is found as made.
  root = tmp_path_factory.mktemp('smoke')
  path, _ = pretrain.from_config(smoke.get_config(), str(root / 'pretrain'), progress=False)
  return path


@pytest.fixture
def smoke_config(smoke_checkpoint):
  """A fresh smoke config that starts from the shared smoke checkpoint."""
  from ntk_time.configs import smoke  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.pretrain.checkpoint = smoke_checkpoint
  return config


def _without_timings(obj):
  """A summary without what depends on the machine's speed (seconds, cost ratios, figures)."""
  if isinstance(obj, dict):
    return {k: _without_timings(v) for k, v in obj.items()
            if 'seconds' not in k and k not in ('ratio', 'figures', 'costs')}
  if isinstance(obj, list):
    return [_without_timings(v) for v in obj]
  return obj


@pytest.fixture
def without_timings():
  return _without_timings
