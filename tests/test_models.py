"""Frozen-BatchNorm apply function, head replacement and checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_time import checkpoint
from ntk_time import models


@pytest.fixture(scope='module')
def tiny():
  model = models.create_model('ResNetTiny', 5)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  variables['batch_stats'] = jax.tree.map(lambda v: v + 0.5, variables['batch_stats'])
  return model, variables


def test_apply_fn_is_deterministic_and_batch_independent(tiny):
  model, variables = tiny
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  full = apply_fn(variables['params'], x)
  np.testing.assert_array_equal(full, apply_fn(variables['params'], x))
  # A sample's logits do not depend on the rest of the batch (BatchNorm frozen).
  np.testing.assert_allclose(apply_fn(variables['params'], x[2:3]), full[2:3], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(apply_fn(variables['params'], x[::-1])[::-1], full, rtol=1e-5,
                             atol=1e-6)
  # Training-mode BatchNorm would not be.
  train_out, _ = model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert not np.allclose(train_out[2:3], apply_fn(variables['params'], x[2:3]), atol=1e-3)


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
