"""Pretraining on a source task (BatchNorm in training mode), with resume.

Produces the pretrained weights that fine-tuning starts from. The workdir holds
`state.msgpack` (the training state after the last finished epoch, for resume)
and, when done, `checkpoint.msgpack` (weights, batch statistics, meta) and
`pretrain.json` (source accuracy).
"""

import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from ntk_time import checkpoint
from ntk_time import data
from ntk_time import losses
from ntk_time import models
from ntk_time import workdir as wd

PyTree = Any


def _train_step(model, tx):
  def step(state, x, y):
    params, batch_stats, opt_state = state

    def objective(p):
      logits, new = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
      return jnp.mean(losses.loss('cross_entropy', logits, y)), new['batch_stats']

    (loss, batch_stats), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss
  return jax.jit(step, donate_argnums=(0,))


def pretrain(model: models.ResNet, task, *, key: jax.Array, epochs: int, batch_size: int,
             lr: float, weight_decay: float, workdir: str, meta: dict,
             progress: bool = True) -> dict:
  """Trains `model` on `task` (SGD, momentum 0.9, cosine decay) and checkpoints it.

  Resumes from `workdir/state.msgpack` if an earlier run stopped mid-way.

  Args:
    model: the source model (head width = task.num_classes).
    task: data.Task with x_train [N, H, W, C].
    key: PRNG key; split into init and data-order keys.
    epochs, batch_size, lr, weight_decay: optimisation settings.
    workdir: output folder.
    meta: JSON-able description stored in the checkpoint (model config, data).

  Returns:
    {'train_acc', 'test_acc', 'epochs', 'seconds'} on the source task, BatchNorm
    in inference mode.
  """
  if batch_size > len(task.x_train):
    raise ValueError(f'batch_size={batch_size} is larger than the source set (N={len(task.x_train)})')
  key_init, key_order = jax.random.split(key)
  image_shape = task.x_train.shape[1:]
  variables = models.init_variables(model, key_init, image_shape)
  steps_per_epoch = len(task.x_train) // batch_size
  schedule = optax.cosine_decay_schedule(lr, epochs * steps_per_epoch)
  tx = optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(schedule, momentum=0.9))
  state = (variables['params'], variables['batch_stats'], tx.init(variables['params']))
  start_epoch, seconds = 0, 0.0
  state_path = os.path.join(workdir, 'state.msgpack')
  if os.path.exists(state_path):
    with open(state_path, 'rb') as f:
      saved = flax.serialization.from_bytes({'state': state, 'epoch': 0, 'seconds': 0.0}, f.read())
    state, start_epoch, seconds = saved['state'], int(saved['epoch']), float(saved['seconds'])

  step = _train_step(model, tx)
  x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
  for epoch in range(start_epoch, epochs):
    t0 = time.perf_counter()
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key_order, epoch), len(x)))
    bar = tqdm.tqdm(range(steps_per_epoch), desc=f'pretrain epoch {epoch + 1}/{epochs}',
                    disable=not progress, leave=False)
    for i in bar:
      idx = perm[i * batch_size:(i + 1) * batch_size]
      state, loss = step(state, x[idx], y[idx])
      if i % 20 == 0:
        bar.set_postfix(loss=f'{float(loss):.3f}')
    jax.block_until_ready(state)
    seconds += time.perf_counter() - t0
    blob = flax.serialization.to_bytes({'state': state, 'epoch': epoch + 1, 'seconds': seconds})
    wd.write_bytes(state_path, blob)

  params, batch_stats, _ = state
  apply_fn = jax.jit(models.make_apply_fn(model, batch_stats))

  def acc(xs, ys):
    correct = sum(int(jnp.sum(jnp.argmax(apply_fn(params, xs[i:i + 500]), -1) == ys[i:i + 500]))
                  for i in range(0, len(xs), 500))
    return correct / len(xs)

  report = {'train_acc': acc(task.x_train, task.y_train), 'test_acc': acc(task.x_test, task.y_test),
            'epochs': epochs, 'seconds': seconds, 'num_params': models.num_params(params),
            'image_shape': list(image_shape)}
  checkpoint.save(os.path.join(workdir, 'checkpoint.msgpack'),
                  {'params': params, 'batch_stats': batch_stats}, dict(meta, **report))
  wd.write_json(os.path.join(workdir, 'pretrain.json'), report)
  return report


def from_config(config, workdir: str, progress: bool = True) -> tuple[str, dict]:
  """The pretrained checkpoint of `config`: (path, report).

  `config.pretrain.checkpoint` names a user's own checkpoint file, used as is.
  Otherwise the source model is pretrained into `workdir` (resuming an
  interrupted run; returning at once when it is done). A workdir that holds a
  pretraining run of another config is refused.
  """
  if config.pretrain.checkpoint:
    _, meta = checkpoint.read(config.pretrain.checkpoint)
    return config.pretrain.checkpoint, meta
  meta = {'model': config.model.to_dict(), 'source': config.source.to_dict(),
          'pretrain': config.pretrain.to_dict(), 'seed': config.seed}
  config_path = os.path.join(workdir, 'config.json')
  if os.path.exists(config_path) and wd.config_hash(wd.read_json(config_path)) != wd.config_hash(meta):
    raise ValueError(f'{workdir} holds a pretraining run of another config; use another workdir '
                     'or delete it')
  path = os.path.join(workdir, 'checkpoint.msgpack')
  done = os.path.join(workdir, 'pretrain.json')
  if os.path.exists(done) and os.path.exists(path):
    return path, wd.read_json(done)
  task = data.task_from_config(config.source)
  model = models.model_from_config(config.model, task.num_classes)
  wd.write_json(config_path, meta)
  p = config.pretrain
  report = pretrain(model, task, key=jax.random.key(config.seed), epochs=p.epochs,
                    batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay,
                    workdir=workdir, meta=meta, progress=progress)
  return path, report
