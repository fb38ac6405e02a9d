"""Frozen-BatchNorm apply function, head replacement and checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_time import checkpoint
from ntk_time import models


@pytest.fixture(scope='module')
def tiny(tiny_resnet):
  # Random BatchNorm everywhere (a fresh net's bn2 scale is zero, which would make the
  # residual branch invisible and fresh statistics the identity).
  return tiny_resnet(5, seed=0)


def _reference_forward(variables, x, batch_statistics=False):
  """ResNetTiny written out in numpy (float64), independently of Flax: logits [N, C].

  BatchNorm normalises by the running statistics, or with batch_statistics=True by the
  batch's own mean and (biased) variance at every layer, as training mode does.
  """
  p, stats = variables['params'], variables['batch_stats']

  def conv(h, kernel):  # 3×3, stride 1, padding 1, no bias: a cross-correlation
    kernel = np.asarray(kernel, np.float64)
    hp = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    height, width = h.shape[1:3]
    return sum(hp[:, a:a + height, b:b + width] @ kernel[a, b] for a in range(3)
               for b in range(3))

  def bn(h, params, running):
    if batch_statistics:
      mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))
    else:
      mean, var = (np.asarray(running[k], np.float64) for k in ('mean', 'var'))
    scale, bias = (np.asarray(params[k], np.float64) for k in ('scale', 'bias'))
    return (h - mean) / np.sqrt(var + 1e-5) * scale + bias

  relu = lambda h: np.maximum(h, 0.0)
  blk, blk_stats = p['stage0_block0'], stats['stage0_block0']
  h = relu(bn(conv(np.asarray(x, np.float64), p['stem_conv']['kernel']), p['stem_bn'],
              stats['stem_bn']))
  y = relu(bn(conv(h, blk['conv1']['kernel']), blk['bn1'], blk_stats['bn1']))
  y = bn(conv(y, blk['conv2']['kernel']), blk['bn2'], blk_stats['bn2'])
  h = relu(h + y).mean((1, 2))
  return h @ np.asarray(p['head']['kernel'], np.float64) + np.asarray(p['head']['bias'])


def test_apply_fn_is_frozen_batchnorm_and_batch_independent(tiny):
  model, variables = tiny
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  full = apply_fn(variables['params'], x)
  # The network written out by hand, BatchNorm by the running statistics.
  expected = _reference_forward(variables, x)
  np.testing.assert_allclose(full, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
  # A sample's logits do not depend on the rest of the batch (BatchNorm frozen).
  np.testing.assert_allclose(apply_fn(variables['params'], x[2:3]), full[2:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply_fn(variables['params'], x[::-1])[::-1], full, rtol=1e-5,
                             atol=1e-6)
  # Training mode normalises by each batch's own statistics, layer by layer: those of the
  # whole batch, and other ones for a sample alone with its neighbour.
  train_out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  batch = _reference_forward(variables, x, batch_statistics=True)
  np.testing.assert_allclose(train_out, batch, rtol=1e-4, atol=1e-5 * np.abs(batch).max())
  pair, _ = model.apply(variables, x[2:4], train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(pair, _reference_forward(variables, x[2:4], batch_statistics=True),
                             rtol=1e-4, atol=1e-5 * np.abs(batch).max())
  assert np.abs(pair[0] - train_out[2]).max() > 1e-2 * np.abs(batch).max()


@pytest.mark.parametrize('name', ['ResNet8', 'ResNet18', 'ResNet50'])
def test_variants_run(name):
  model = models.create_model(name, 7)
  shape = (32, 32, 3)
  out = jax.eval_shape(lambda: model.apply(models.init_variables(model, jax.random.key(0), shape),
                                           jnp.zeros((2, *shape))))
  assert out.shape == (2, 7)


def test_unknown_model():
  with pytest.raises(ValueError, match="unknown model 'ResNet9'"):
    models.create_model('ResNet9', 3)


def test_replace_head(tiny):
  model, variables = tiny
  target = models.create_model('ResNetTiny', 3)
  new = models.replace_head(target, variables, jax.random.key(7), (8, 8, 1))
  assert new['params']['head']['kernel'].shape == (4, 3)
  assert np.abs(new['params']['head']['kernel']).max() > 0  # never a zero head
  np.testing.assert_array_equal(new['params']['stem_conv']['kernel'],
                                variables['params']['stem_conv']['kernel'])
  again = models.replace_head(target, variables, jax.random.key(7), (8, 8, 1))
  np.testing.assert_array_equal(new['params']['head']['kernel'], again['params']['head']['kernel'])
  other = models.replace_head(target, variables, jax.random.key(8), (8, 8, 1))
  assert not np.allclose(new['params']['head']['kernel'], other['params']['head']['kernel'])


def test_replace_head_rejects_other_backbone(tiny):
  _, variables = tiny
  wider = models.create_model('ResNetTiny', 3, num_filters=8)
  with pytest.raises(ValueError, match='shape mismatch'):
    models.replace_head(wider, variables, jax.random.key(0), (8, 8, 1))


def test_checkpoint_round_trip(tiny, tmp_path):
  model, variables = tiny
  path = str(tmp_path / 'ckpt.msgpack')
  checkpoint.save(path, variables, {'note': 'test'})
  loaded, meta = checkpoint.load(path, model, (8, 8, 1))
  assert meta == {'note': 'test'}
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
