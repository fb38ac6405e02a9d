"""Real fine-tuning with Optax: the ground truth every prediction is checked against.

All parameters are trained with `sgd.make_optimizer` (SGD, momentum, Nesterov,
weight decay, schedule) through the same frozen-BatchNorm `apply_fn` that the
kernel linearises, on an explicit `[steps, B]` batch order that the simulator
can replay. Every `eval_every` steps the loss and accuracy on the *whole*
training set (or on a fixed subset of it, `eval_subset`, where evaluating all
of a large set would cost more than the training) and on the test set are
recorded.
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable

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
from ntk_time import pretrain
from ntk_time import probe
from ntk_time import sgd
from ntk_time import workdir as wd

PyTree = Any

EVAL_CHUNK = 500
HEAD_INITS = ('random', 'zero', 'linear_probe')  # finetune.head_init


@dataclasses.dataclass
class Curves:
  """Loss / accuracy at `steps` (every eval_every SGD steps, 0 and T included).

  steps: [E] int; train_loss, train_acc, test_loss, test_acc: [E].
  """
  steps: np.ndarray
  train_loss: np.ndarray
  train_acc: np.ndarray
  test_loss: np.ndarray
  test_acc: np.ndarray

  def to_dict(self) -> dict[str, np.ndarray]:
    return dataclasses.asdict(self)


def eval_steps(steps: int, eval_every: int) -> np.ndarray:
  """The evaluated steps 0, eval_every, ..., steps: [steps // eval_every + 1]."""
  if not (isinstance(eval_every, (int, np.integer)) and eval_every >= 1):
    raise ValueError(f'eval_every must be a positive integer, got {eval_every!r}')
  if steps % eval_every:
    raise ValueError(f'eval_every={eval_every} must divide the horizon steps={steps}')
  return np.arange(0, steps + 1, eval_every)


def evaluate_fn(apply_fn: Callable, loss_name: str) -> Callable:
  """evaluate(params, x: [N, ...], y: [N]) -> (mean loss, accuracy), in chunks."""
  @jax.jit
  def sums(params, x, y):
    f = apply_fn(params, x)
    return jnp.sum(losses.loss(loss_name, f, y)), jnp.sum(jnp.argmax(f, -1) == y)

  def evaluate(params, x, y):
    tot_l, tot_c = 0.0, 0
    for i in range(0, len(x), EVAL_CHUNK):
      loss_sum, c = sums(params, x[i:i + EVAL_CHUNK], y[i:i + EVAL_CHUNK])
      tot_l += float(loss_sum)
      tot_c += int(c)
    return tot_l / len(x), tot_c / len(x)
  return evaluate


def eval_subset(n: int, size: int, seed: int) -> np.ndarray | None:
  """The fixed training samples a run is evaluated on: [size] sorted indices into
  0..n-1, a uniformly random draw from `seed`; None (all n) for size 0 or size >= n."""
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 0:
    raise ValueError(f'eval_samples must be an integer >= 0, got {size!r}')
  if size == 0 or size >= n:
    return None
  return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def train_step_fn(apply_fn: Callable, tx: optax.GradientTransformation, loss_name: str) -> Callable:
  """train_step((params, opt_state), (x: [B, ...], y: [B])) -> (state, metrics)."""
  def train_step(state, batch):
    params, opt_state = state
    x, y = batch

    def objective(p):
      return jnp.mean(losses.loss(loss_name, apply_fn(p, x), y))

    loss, grads = jax.value_and_grad(objective)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), {'loss': loss}
  return train_step


def _fingerprint(params: PyTree, task, hp: sgd.SGD, order: np.ndarray, loss: str,
                 eval_every: int, eval_idx: np.ndarray | None) -> str:
  """What a run's result depends on; a saved run with another fingerprint is not resumed."""
  # The evaluation subset only when there is one: runs on the whole set keep their hash.
  extra = {} if eval_idx is None else {'eval_idx': wd.digest(eval_idx)}
  return wd.config_hash({'hp': hp.to_dict(), 'loss': loss, 'eval_every': eval_every,
                         'order': wd.digest(order), 'x': wd.digest(task.x_train, task.y_train),
                         'params': wd.digest(*jax.tree.leaves(params)), **extra})


def finetune(apply_fn: Callable, params: PyTree, task, hp: sgd.SGD, order: np.ndarray, *,
             loss: str, eval_every: int, workdir: str | None = None,
             checkpoint_every: int | None = None, progress: bool = True,
             eval_idx: np.ndarray | None = None) -> dict:
  """Fine-tunes `params` on `task` for `hp.steps` steps of the batches `order`.

  Args:
    apply_fn: apply_fn(params, x) -> logits, BatchNorm frozen.
    params: initial parameters (pretrained backbone + fresh head).
    task: data.Task (x_train [N, H, W, C], y_train [N], x_test, y_test).
    hp: hyper-parameters; hp.steps is the horizon T.
    order: [T, B] int minibatch indices into x_train.
    loss: 'cross_entropy' or 'mse'.
    eval_every: evaluation interval in SGD steps; must divide T.
    workdir: if given, writes metrics.jsonl, curves.npz (with the order) and
      run.json there when done, and progress.msgpack (the training state) every
      `checkpoint_every` steps while running, from which a rerun of the same
      run resumes. An interrupted run resumed this way gives the same numbers
      as one that was never interrupted.
    checkpoint_every: a multiple of eval_every (default: eval_every).
    progress: show a tqdm bar.
    eval_idx: [E_train] indices into x_train on which the training loss and
      accuracy are evaluated (`eval_subset`); None: the whole training set.

  Returns:
    dict with 'curves' (Curves), 'params' (final), 'seconds_per_step'
    (mean of compiled steps, evaluation excluded), 'train_seconds' (all steps),
    'wall_seconds' (evaluation included), 'order', 'diverged_at' (the first
    evaluated step with a non-finite training loss, or None). A diverged run
    stops there; its curves are NaN from that step on.
  """
  hp.validate(len(task.x_train))
  order = np.asarray(order)
  if order.shape != (hp.steps, hp.batch_size):
    raise ValueError(f'batch order must be [steps={hp.steps}, B={hp.batch_size}], got {order.shape}')
  if order.min() < 0 or order.max() >= len(task.x_train):
    raise ValueError(f'batch order indexes outside the training set (N={len(task.x_train)})')
  steps_eval = eval_steps(hp.steps, eval_every)
  x_eval, y_eval = task.x_train, task.y_train
  if eval_idx is not None:
    eval_idx = np.asarray(eval_idx)
    if not len(eval_idx) or eval_idx.min() < 0 or eval_idx.max() >= len(task.x_train):
      raise ValueError(f'eval_idx must be non-empty indices into the training set '
                       f'(N={len(task.x_train)})')
    x_eval, y_eval = task.x_train[eval_idx], task.y_train[eval_idx]
  checkpoint_every = checkpoint_every or eval_every
  if checkpoint_every % eval_every:
    raise ValueError(f'checkpoint_every={checkpoint_every} must be a multiple of '
                     f'eval_every={eval_every}')
  tx = sgd.make_optimizer(hp)
  step = jax.jit(train_step_fn(apply_fn, tx, loss), donate_argnums=(0,))
  evaluate = evaluate_fn(apply_fn, loss)
  x_train, y_train = jnp.asarray(task.x_train), jnp.asarray(task.y_train)

  start = time.perf_counter()
  state = (params, tx.init(params))
  # rows: one dict per evaluation; step_times: seconds of every step; fresh: steps that compiled.
  rows, step_times, fresh, first = [], [], [], 0
  progress_path = os.path.join(workdir, 'progress.msgpack') if workdir else None
  fingerprint = (_fingerprint(params, task, hp, order, loss, eval_every, eval_idx) if workdir
                 else None)
  if progress_path and os.path.exists(progress_path):
    with open(progress_path, 'rb') as f:
      saved = flax.serialization.msgpack_restore(f.read())
    log = json.loads(saved['log'])
    if log['fingerprint'] == fingerprint:
      state = flax.serialization.from_state_dict(state, saved['state'])
      rows, step_times, fresh, first = log['rows'], log['step_times'], log['fresh'], log['step']
  state = jax.tree.map(jnp.array, state)  # a copy: the step donates its input buffers

  def record(k):
    tl, ta = evaluate(state[0], x_eval, y_eval)
    vl, va = evaluate(state[0], task.x_test, task.y_test)
    rows.append({'step': int(k), 'train_loss': tl, 'train_acc': ta, 'test_loss': vl,
                 'test_acc': va})
    return np.isfinite(tl)

  def save_progress(k):
    log = {'fingerprint': fingerprint, 'step': k, 'rows': rows, 'step_times': step_times,
           'fresh': fresh}
    blob = {'state': flax.serialization.to_state_dict(jax.device_get(state)),
            'log': json.dumps(log)}
    wd.write_bytes(progress_path, flax.serialization.msgpack_serialize(blob))

  diverged_at = None
  if first == 0 and not record(0):
    diverged_at = 0
  bar = tqdm.tqdm(total=hp.steps, initial=first, disable=not progress, leave=False,
                  desc=f'fine-tune lr={hp.lr:g} B={hp.batch_size} m={hp.momentum:g}')
  fresh.append(first)
  for k in range(first, hp.steps if diverged_at is None else first):
    idx = order[k]
    t0 = time.perf_counter()
    state, _ = step(state, (x_train[idx], y_train[idx]))
    jax.block_until_ready(state)
    step_times.append(time.perf_counter() - t0)
    bar.update(1)
    if (k + 1) % eval_every == 0:
      if not record(k + 1):
        diverged_at = k + 1
        break
      if progress_path and (k + 1) % checkpoint_every == 0 and k + 1 < hp.steps:
        save_progress(k + 1)
  bar.close()
  wall = time.perf_counter() - start
  for k in steps_eval[len(rows):]:  # after a divergence: NaN, never a made-up value
    rows.append({'step': int(k), 'train_loss': np.nan, 'train_acc': np.nan, 'test_loss': np.nan,
                 'test_acc': np.nan})

  curves = Curves(**{key: np.array([r[key] for r in rows], np.float64) for key in
                     ('train_loss', 'train_acc', 'test_loss', 'test_acc')},
                  steps=np.array([r['step'] for r in rows]))
  assert np.array_equal(curves.steps, steps_eval)
  # A step right after a (re)start includes compilation; the rest is the steady-state cost.
  steady = [t for i, t in enumerate(step_times) if i not in fresh]
  per_step = float(np.mean(steady)) if steady else float(np.mean(step_times or [np.nan]))
  result = {'curves': curves, 'params': state[0], 'seconds_per_step': per_step,
            'train_seconds': float(np.sum(step_times)), 'wall_seconds': wall, 'order': order,
            'diverged_at': diverged_at}
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    wd.write_jsonl(os.path.join(workdir, 'metrics.jsonl'), rows)
    wd.write_npz(os.path.join(workdir, 'curves.npz'), order=order, **curves.to_dict())
    wd.write_json(os.path.join(workdir, 'run.json'), {
        'hparams': hp.to_dict(), 'loss': loss, 'eval_every': eval_every,
        'seconds_per_step': per_step, 'train_seconds': result['train_seconds'],
        'wall_seconds': wall, 'diverged_at': diverged_at, 'final': rows[-1]})
    if os.path.exists(progress_path):
      os.remove(progress_path)
  return result


def step_cost(apply_fn: Callable, params: PyTree, task, hp: sgd.SGD, *, loss: str,
              key: jax.Array, repeats: int = 5) -> tuple[float, float]:
  """(seconds, FLOPs) of one compiled real training step at hp.batch_size on this machine.

  One compilation serves both: XLA's cost analysis counts the FLOPs (with one timed
  step, the cost of a step at any batch size), and `repeats` steps of the compiled
  executable on random batches of `task`, after one untimed warm-up, give the median
  seconds: what turns predicted steps into predicted seconds without running the
  fine-tuning itself.
  """
  tx = sgd.make_optimizer(hp)
  state = (params, tx.init(params))
  idx = np.asarray(jax.random.choice(key, len(task.x_train), (repeats + 1, hp.batch_size)))
  x, y = jnp.asarray(task.x_train), jnp.asarray(task.y_train)
  step = jax.jit(train_step_fn(apply_fn, tx, loss)).lower(state, (x[idx[0]], y[idx[0]])).compile()
  cost = step.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax
  jax.block_until_ready(step(state, (x[idx[0]], y[idx[0]])))
  times = []
  for i in idx[1:]:
    t0 = time.perf_counter()
    jax.block_until_ready(step(state, (x[i], y[i])))
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), float(cost['flops'])


def init_head(variables: PyTree, features_fn: Callable, task, head_init: str, *, loss: str,
              probe_l2: float) -> tuple[PyTree, dict]:
  """The fine-tuning start point's head, by `head_init` (one of HEAD_INITS).

  'random' keeps the fresh head of models.replace_head; 'zero' zeroes kernel and
  bias (the backbone then has no gradient at w0: the first steps train the head
  alone); 'linear_probe' fits kernel and bias on the frozen features of the
  target training set (probe.fit), the LP of LP-FT. The prediction and the real
  runs both start from the result.

  Args:
    variables: {'params', 'batch_stats'} with a Dense `head` (kernel [D, C], bias [C]).
    features_fn: features_fn(params, x) -> [n, D], BatchNorm frozen.
    task: data.Task; its x_train [N, ...], y_train [N] feed the probe.
    head_init: 'random', 'zero' or 'linear_probe'.
    loss: the fine-tuning loss, which the probe minimises.
    probe_l2: the probe's L2 strength on the kernel.

  Returns:
    (variables with the new head, report {'head_init', 'seconds', ...}; the
    probe's report (probe.fit) and probe_l2 for 'linear_probe').
  """
  if head_init not in HEAD_INITS:
    raise ValueError(f'unknown head_init={head_init!r}; expected one of {HEAD_INITS}')
  head = variables['params']['head']
  report = {'head_init': head_init, 'seconds': 0.0}
  if head_init == 'zero':
    head = jax.tree.map(jnp.zeros_like, head)
  elif head_init == 'linear_probe':
    start = time.perf_counter()
    phi = np.concatenate([np.asarray(jax.jit(features_fn)(variables['params'],
                                                           task.x_train[i:i + EVAL_CHUNK]))
                          for i in range(0, len(task.x_train), EVAL_CHUNK)])
    kernel, bias, fit = probe.fit(phi, task.y_train, task.num_classes, loss=loss, l2=probe_l2)
    dtype = head['kernel'].dtype
    head = {'kernel': jnp.asarray(kernel, dtype), 'bias': jnp.asarray(bias, dtype)}
    # The probe's cost includes the features' forward pass, not only the solve.
    report.update(fit, probe_l2=probe_l2, seconds=time.perf_counter() - start)
  params = dict(variables['params'], head=head)
  return dict(variables, params=params), report


def target_from_config(config, workdir: str, key_head: jax.Array, progress: bool = True):
  """The fine-tuning starting point of a config: pretrained backbone + a new head.

  Loads and checks the target task first (so that a bad task fails before any
  pretraining), then pretrains into `workdir/pretrain` unless the checkpoint
  exists there or `config.pretrain.checkpoint` names one, then initialises the
  head by `config.finetune.head_init` (`init_head`).

  Returns:
    (task, model, variables {'params', 'batch_stats'}, pretrain report, checkpoint
    path, head report of `init_head`).
  """
  task = data.task_from_config(config.target)
  for hp in sgd.grid(config.finetune):
    hp.validate(len(task.x_train))
  ckpt_path, report = pretrain.from_config(config, os.path.join(workdir, 'pretrain'), progress)
  image_shape = task.x_train.shape[1:]
  source_model = models.model_from_config(config.model, len(config.source.classes))
  pretrained, _ = checkpoint.load(ckpt_path, source_model, image_shape)
  model = models.model_from_config(config.model, task.num_classes)
  variables = models.replace_head(model, pretrained, key_head, image_shape)
  ft = config.finetune
  variables, head_report = init_head(
      variables, models.make_features_fn(model, variables['batch_stats']), task, ft.head_init,
      loss=ft.loss, probe_l2=ft.probe_l2)
  return task, model, variables, report, ckpt_path, head_report
