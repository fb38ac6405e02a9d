"""Real fine-tuning: it learns, replays exactly, and its optimiser is the one written down."""

import jax
import numpy as np
import pytest

from ntk_time.compat import enable_x64
from ntk_time import data
from ntk_time import finetune
from ntk_time import models
from ntk_time import sgd


@pytest.fixture(scope='module')
def tiny_task(digits_source):
  task = data.make_task(digits_source, (0, 1, 2), n_train=30, n_test=15, seed=0)
  model = models.create_model('ResNetTiny', 3)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  return task, models.make_apply_fn(model, variables['batch_stats']), variables['params']


def test_loss_decreases_and_order_replays_exactly(tiny_task, tmp_path):
  task, apply_fn, params = tiny_task
  hp = sgd.SGD(lr=0.1, batch_size=10, steps=20, momentum=0.9)
  order = sgd.batch_order(jax.random.key(1), 30, 10, 20)
  a = finetune.finetune(apply_fn, params, task, hp, order, loss='cross_entropy', eval_every=5,
                        workdir=str(tmp_path), progress=False)
  assert a['curves'].train_loss[-1] < 0.9 * a['curves'].train_loss[0]
  saved = np.load(tmp_path / 'curves.npz')
  np.testing.assert_array_equal(saved['order'], order)
  assert (tmp_path / 'metrics.jsonl').read_text().count('\n') == 5
  b = finetune.finetune(apply_fn, params, task, hp, saved['order'], loss='cross_entropy',
                        eval_every=5, progress=False)
  np.testing.assert_array_equal(a['curves'].train_loss, b['curves'].train_loss)
  jax.tree.map(np.testing.assert_array_equal, a['params'], b['params'])
  assert a['seconds_per_step'] > 0 and a['train_seconds'] >= 19 * a['seconds_per_step'] * 0.5


def test_optax_update_is_the_hand_written_one(linear_task):
  """optax SGD + momentum + weight decay == v <- m v + g + λw, w <- w - η v (float64)."""
  t = linear_task
  hp = sgd.SGD(lr=0.03, batch_size=3, steps=12, momentum=0.9, weight_decay=0.01)
  order = sgd.batch_order(jax.random.key(2), len(t.x_train), 3, 12)
  with enable_x64():
    real = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='mse', eval_every=4,
                             progress=False)
  w, v = t.w0['w'].copy(), np.zeros_like(t.w0['w'])
  for idx in order:
    x, y = t.x_train[idx], np.eye(3)[t.y_train[idx]]
    g = np.einsum('bcp,bc->p', x, x @ w - y) / len(idx)  # ∇ of mean ½‖xw - y‖²
    v = hp.momentum * v + g + hp.weight_decay * w
    w = w - hp.lr * v
  np.testing.assert_allclose(real['params']['w'], w, rtol=1e-12)


@pytest.mark.parametrize('kwargs, match', [
    (dict(lr=-0.1), 'lr=-0.1'),
    (dict(lr=float('nan')), 'lr=nan'),
    (dict(lr=0.0), 'lr=0.0'),
    (dict(momentum=1.0), 'momentum=1.0'),
    (dict(momentum=-0.1), 'momentum=-0.1'),
    (dict(batch_size=0), 'batch_size=0'),
    (dict(steps=0), 'steps=0'),
    (dict(weight_decay=-1.0), 'weight_decay=-1.0'),
    (dict(schedule='exponential'), "'exponential'"),
    (dict(nesterov=True), 'nesterov=True needs momentum'),
])
def test_bad_hyper_parameters(kwargs, match):
  base = dict(lr=0.1, batch_size=4, steps=10)
  with pytest.raises(ValueError, match=match):
    sgd.SGD(**{**base, **kwargs})


def test_batch_larger_than_dataset(tiny_task):
  task, apply_fn, params = tiny_task
  hp = sgd.SGD(lr=0.1, batch_size=31, steps=2)
  with pytest.raises(ValueError, match=r'batch_size=31 is larger than the training set \(N=30\)'):
    finetune.finetune(apply_fn, params, task, hp, np.zeros((2, 31), int), loss='mse', eval_every=1)


def test_eval_every_must_divide(tiny_task):
  task, apply_fn, params = tiny_task
  hp = sgd.SGD(lr=0.1, batch_size=5, steps=10)
  with pytest.raises(ValueError, match='eval_every=3 must divide the horizon steps=10'):
    finetune.finetune(apply_fn, params, task, hp, sgd.batch_order(jax.random.key(0), 30, 5, 10),
                      loss='mse', eval_every=3)


def test_batch_order_is_epochs_without_replacement():
  order = sgd.batch_order(jax.random.key(0), 10, 3, 7)
  assert order.shape == (7, 3)
  for epoch in (order[0:3], order[3:6]):
    assert len(np.unique(epoch)) == 9
  np.testing.assert_array_equal(order, sgd.batch_order(jax.random.key(0), 10, 3, 7))


def test_schedule_reaches_optax(linear_task):
  hp = sgd.SGD(lr=0.1, batch_size=2, steps=10, schedule='cosine')
  lrs = sgd.learning_rates(hp)
  assert lrs[0] == pytest.approx(0.1) and lrs[-1] < 0.01 and np.all(np.diff(lrs) <= 0)
