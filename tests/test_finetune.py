"""Real fine-tuning: it learns, replays exactly, and its optimiser is the one written down."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_time.compat import enable_x64
from ntk_time import data
from ntk_time import finetune
from ntk_time import models
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times


@pytest.fixture(scope='module')
def tiny_task(digits_source, tiny_resnet):
  task = data.make_task(digits_source, (0, 1, 2), n_train=30, n_test=15, seed=0)
  model, variables = tiny_resnet(3, seed=0)  # random BatchNorm: every parameter trains
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
  # seconds_per_step is the mean of the 19 compiled steps, without the first one, which
  # compiles: train_seconds = first + 19 × seconds_per_step, the first far the longest.
  first = a['train_seconds'] - 19 * a['seconds_per_step']
  assert first > 5 * a['seconds_per_step'] > 0, (first, a['seconds_per_step'])
  assert a['wall_seconds'] > a['train_seconds']
  # ... and it is the cost of a step measured on its own (within a loaded machine's noise).
  alone, flops = finetune.step_cost(apply_fn, params, task, hp, loss='cross_entropy',
                                    key=jax.random.key(3))
  assert alone / 5 < a['seconds_per_step'] < 5 * alone, (alone, a['seconds_per_step'])
  # XLA's count grows with the batch (the optimiser's update is the same at every B).
  _, flops_2b = finetune.step_cost(apply_fn, params, task, dataclasses.replace(hp, batch_size=20),
                                   loss='cross_entropy', key=jax.random.key(3), repeats=1)
  assert 1.7 < flops_2b / flops < 2.0, (flops, flops_2b)


def test_step_flops_are_the_hand_count_of_a_dense_layer():
  """One step of f(x) = x W, W [D, C]: the forward product and the gradient's, 4 B D C
  FLOPs; the softmax, the loss and the update add about 3% here (XLA's count)."""
  rng = np.random.default_rng(0)
  b, d, c = 32, 256, 64
  task = types.SimpleNamespace(x_train=rng.normal(size=(100, d)).astype(np.float32),
                               y_train=rng.integers(0, c, 100).astype(np.int32))
  params = {'w': jnp.asarray(rng.normal(size=(d, c)), jnp.float32)}
  _, flops = finetune.step_cost(lambda p, x: x @ p['w'], params, task,
                                sgd.SGD(lr=0.1, batch_size=b, steps=1, momentum=0.9),
                                loss='cross_entropy', key=jax.random.key(0), repeats=1)
  assert 1.0 <= flops / (4 * b * d * c) < 1.1, flops


def test_replay_tracks_the_real_resnet_over_a_long_horizon_at_a_tiny_learning_rate(tiny_task):
  """The exact simulator on the real batch order against real fine-tuning of the ResNet,
  200 steps (momentum 0.9, cosine schedule, B = 10 of 30), η̃ = 4e-5 small enough for the
  linearisation to hold: the loss moves by 0.004 and the prediction gets that change
  right to 1.5% on the training and the test set (measured 0.5% and 0.7%; 1.3% and 1.6%
  at twice the learning rate, the linearisation's error; the class-traced kernel is 16%
  off, a constant schedule 108%)."""
  task, apply_fn, params = tiny_task
  hp = sgd.SGD(lr=4e-6, batch_size=10, steps=200, momentum=0.9, schedule='cosine')
  order = sgd.batch_order(jax.random.key(1), 30, 10, 200)
  real = finetune.finetune(apply_fn, params, task, hp, order, loss='cross_entropy',
                           eval_every=20, progress=False)
  lin = ntk.linearize(apply_fn, params, task.x_train, task.x_test, progress=False)
  [pred] = predict.predict(lin, task.y_train, task.y_test, [hp], method='replay',
                           orders=[order[None]], loss='cross_entropy', eval_every=20,
                           targets=times.Targets())
  for name in ('train_loss', 'test_loss'):
    got, want = pred.curves[name].mean, getattr(real['curves'], name)
    assert got[0] == pytest.approx(want[0], rel=1e-6), name
    assert want[-1] < want[0] - 2e-3, name  # it moved
    np.testing.assert_allclose(got[1:] - got[0], want[1:] - want[0], rtol=0.015, err_msg=name)


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


def test_eval_subset_is_fixed_seeded_and_what_the_run_evaluates(tiny_task, tmp_path):
  """The training curves of a run with eval_idx are the loss and accuracy of the same
  run's weights on those samples only (a run on the whole set, replayed, gives them at the
  end), and the subset is a fixed draw of its seed."""
  task, apply_fn, params = tiny_task
  idx = finetune.eval_subset(30, 12, seed=3)
  np.testing.assert_array_equal(idx, finetune.eval_subset(30, 12, seed=3))
  assert len(set(idx)) == 12 and list(idx) == sorted(idx) and idx.max() < 30
  assert not np.array_equal(idx, finetune.eval_subset(30, 12, seed=4))
  assert finetune.eval_subset(30, 0, seed=3) is None and finetune.eval_subset(30, 30, 3) is None
  hp = sgd.SGD(lr=0.1, batch_size=10, steps=10, momentum=0.9)
  order = sgd.batch_order(jax.random.key(1), 30, 10, 10)
  full = finetune.finetune(apply_fn, params, task, hp, order, loss='cross_entropy', eval_every=5,
                           progress=False)
  sub = finetune.finetune(apply_fn, params, task, hp, order, loss='cross_entropy', eval_every=5,
                          progress=False, eval_idx=idx, workdir=str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, full['params'], sub['params'])
  evaluate = finetune.evaluate_fn(apply_fn, 'cross_entropy')
  for w, k in ((params, 0), (sub['params'], -1)):
    loss, acc = evaluate(w, task.x_train[idx], task.y_train[idx])
    assert sub['curves'].train_loss[k] == pytest.approx(loss, rel=1e-6)
    assert sub['curves'].train_acc[k] == pytest.approx(acc)
  assert sub['curves'].train_loss[0] != pytest.approx(full['curves'].train_loss[0], rel=1e-3)
  np.testing.assert_array_equal(sub['curves'].test_loss, full['curves'].test_loss)
  with pytest.raises(ValueError, match=r'eval_samples must be an integer >= 0, got -1'):
    finetune.eval_subset(30, -1, seed=0)
  with pytest.raises(ValueError, match=r'eval_idx must be non-empty indices into the training '
                     r'set \(N=30\)'):
    finetune.finetune(apply_fn, params, task, hp, order, loss='mse', eval_every=5,
                      progress=False, eval_idx=np.array([0, 30]))


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


@pytest.mark.parametrize('schedule', sgd.SCHEDULES)
def test_schedule_is_what_optax_applies(schedule):
  """learning_rates(hp), which the simulators use, against the steps that the optimiser
  of the real runs takes (loss w, gradient 1: the update of step k is -η_k), and against
  the schedule's formula."""
  import optax  # pylint: disable=g-import-not-at-top
  hp = sgd.SGD(lr=0.1, batch_size=2, steps=10, schedule=schedule)
  tx = sgd.make_optimizer(hp)
  w = {'w': np.zeros(())}
  state, applied = tx.init(w), []
  for _ in range(hp.steps):
    updates, state = tx.update({'w': np.ones(())}, state, w)
    w = optax.apply_updates(w, updates)
    applied.append(-float(updates['w']))
  k = np.arange(hp.steps)
  formula = {'constant': np.full(hp.steps, 0.1), 'cosine': 0.05 * (1 + np.cos(np.pi * k / 10)),
             'linear': 0.1 * (1 - k / 10)}[schedule]
  np.testing.assert_allclose(sgd.learning_rates(hp), applied, rtol=1e-6)
  np.testing.assert_allclose(sgd.learning_rates(hp), formula, rtol=1e-6, atol=1e-9)
