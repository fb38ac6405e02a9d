import jax
import numpy as np
import pytest

# Fast compiles: the tests check numbers, not speed.
jax.config.update('jax_disable_most_optimizations', True)

from ntk_time import data  # noqa: E402  pylint: disable=g-import-not-at-top


@pytest.fixture
def key():
  return jax.random.key(0)


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
