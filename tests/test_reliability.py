"""Bad input is refused at the boundary with the value named; runs survive interruption."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import flax
import jax
import numpy as np
import pytest

from ntk_time import checkpoint
from ntk_time import checks
from ntk_time import data
from ntk_time import finetune
from ntk_time import models
from ntk_time import sgd
from ntk_time import workdir as wd
from ntk_time.configs import smoke

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, path, value):
  *blocks, name = path.split('.')
  for b in blocks:
    config = config[b]
  config[name] = value


# (field, bad value, error type, what the message must say). The smoke target has N = 24.
CONFIG_CASES = [
    ('finetune.lr', (0.0,), ValueError, 'lr=0.0'),
    ('finetune.lr', (-0.01,), ValueError, 'lr=-0.01'),
    ('finetune.lr', (math.nan,), ValueError, 'lr=nan'),
    ('finetune.lr', (math.inf,), ValueError, 'lr=inf'),
    ('finetune.momentum', (1.0,), ValueError, r'momentum must be in \[0, 1\), got momentum=1.0'),
    ('finetune.momentum', (-0.5,), ValueError, 'momentum=-0.5'),
    ('finetune.batch_size', (0,), ValueError, 'batch_size=0'),
    ('finetune.batch_size', (25,), ValueError, r'batch_size=25 is larger than the training set '
     r'\(N=24\)'),
    ('finetune.steps', 0, ValueError, r'finetune.steps \(the horizon\) .* got finetune.steps=0'),
    ('finetune.eval_every', 4, ValueError, 'eval_every=4 must divide the horizon '
     'finetune.steps=6'),
    ('finetune.checkpoint_every', 3, ValueError, 'checkpoint_every=3 must be a multiple'),
    ('finetune.seeds', 0, ValueError, 'finetune.seeds=0'),
    ('finetune.lr', (), ValueError, 'finetune.lr is an empty list'),
    ('finetune.loss', 'hinge', ValueError, "unknown finetune.loss='hinge'"),
    ('finetune.schedule', 'step', ValueError, "unknown schedule 'step'"),
    ('finetune.sampling', 'poisson', ValueError, "unknown finetune.sampling='poisson'"),
    ('finetune.optimizer', 'adam', ValueError, "unknown config field finetune.optimizer='adam'"),
    ('predict.eps', 0.0, ValueError, 'eps=0.0'),
    ('predict.eps', -0.1, ValueError, 'eps=-0.1'),
    ('predict.levels', (2.0, 1.0), ValueError, r'predict.levels must be .* got \(2.0, 1.0\)'),
    ('predict.levels', (), ValueError, r'predict.levels must be .* got \(\)'),
    ('predict.eps_acc', 0.0, ValueError, 'predict.eps_acc=0.0'),
    ('predict.horizon_fraction', 1.5, ValueError, 'predict.horizon_fraction must be in .* got 1.5'),
    ('predict.methods', ('sde', 'exact'), ValueError, r"predict.methods must be .* \('sde', 'exact'\)"),
    ('predict.dtype', 'float16', ValueError, "'float16'"),
    ('predict.num_paths', 0, ValueError, 'predict.num_paths=0'),
    ('predict.dt', 4, ValueError, 'predict.dt=4 must divide finetune.eval_every=2'),
    ('target.source', 'mnist', ValueError, "unknown target.source='mnist'"),
    ('target.classes', (5, 5), ValueError, r'distinct .* got \[5, 5\]'),
    ('target.n_train', 0, ValueError, 'target.n_train=0'),
    ('model.name', 'ResNet9', ValueError, "unknown model.name='ResNet9'"),
    ('kernel.implementation', 'fast', ValueError, "unknown kernel.implementation='fast'"),
    ('kernel.memory_gb', -1.0, ValueError, 'kernel.memory_gb=-1.0'),
    ('kernel.sketch_kind', 'count', ValueError, "unknown kernel.sketch_kind='count'"),
    ('pretrain.lr', 0.0, ValueError, 'pretrain.lr=0.0'),
    ('pretrain.batch_size', 500, ValueError,
     r'pretrain.batch_size=500 is larger .* \(source.n_train=200\)'),
    ('pretrain.checkpoint', '/no/such/ckpt.msgpack', FileNotFoundError, '/no/such/ckpt.msgpack'),
]


@pytest.mark.parametrize('field, value, error, match', CONFIG_CASES,
                         ids=[f'{c[0]}={c[1]!r}' for c in CONFIG_CASES])
def test_bad_config_is_refused_before_any_work(field, value, error, match):
  config = smoke.get_config()
  _set(config, field, value)
  with pytest.raises(error, match=match):
    checks.check(config)


def test_smoke_and_shipped_configs_pass_the_check():
  from ntk_time.configs import default, digits, fashion_mse  # pylint: disable=g-import-not-at-top
  for module in (smoke, default, digits, fashion_mse):
    assert checks.check(module.get_config())


# Known only once the data are loaded: checked by data.make_task, before pretraining.
TASK_CASES = [
    (dict(classes=(5, 12)), r'unknown classes \[12\]'),
    (dict(n_train=5000), 'asked for 5000 training samples'),
    (dict(n_test=900), 'asked for 900 test samples'),
]


@pytest.mark.parametrize('override, match', TASK_CASES)
def test_bad_task_is_refused_before_pretraining(override, match, tmp_path):
  from ntk_time import pipeline  # pylint: disable=g-import-not-at-top
  config = smoke.get_config()
  config.target.update(override)
  with pytest.raises(ValueError, match=match):
    pipeline.run(config, str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / 'pretrain' / 'checkpoint.msgpack')


def _images(n=6, shape=(8, 8, 1)):
  return np.zeros((n, *shape), np.float32)


DATA_CASES = [
    (np.zeros((6, 8, 8)), np.zeros(6, int), r'must be \[N, H, W, C\]; got shape \(6, 8, 8\)'),
    (np.where(np.arange(6)[:, None, None, None] == 4, np.nan, _images()), np.zeros(6, int),
     r'NaN/inf \(64 values, first in image 4\)'),
    (np.where(np.arange(6)[:, None, None, None] == 2, np.inf, _images()), np.zeros(6, int),
     'NaN/inf .* first in image 2'),
    (_images(), np.array([0, 1, 2, 0, 1, 7]), r'labels must be in 0..2; got range \[0, 7\]'),
    (_images(), np.array([0, 1, 2, 0, 1, -1]), r'got range \[-1, 2\]'),
    (_images(), np.zeros(5, int), r'labels must be \[N=6\]; got shape \(5,\)'),
]


@pytest.mark.parametrize('images, labels, match', DATA_CASES)
def test_bad_data_is_refused(images, labels, match):
  with pytest.raises(ValueError, match=match):
    data.check_images(images, labels, 3, 'training')


def test_empty_class_is_refused():
  split = data.Split(_images(), np.array([0, 0, 1, 1, 3, 3], np.int32))
  src = data.Source(split, split, ('a', 'b', 'c', 'd'))
  with pytest.raises(ValueError, match='class 2 has no training samples'):
    data.make_task(src, (0, 2), n_train=2, n_test=2, seed=0)


@pytest.fixture(scope='module')
def saved_checkpoint(tmp_path_factory):
  model = models.create_model('ResNetTiny', 3, num_filters=4)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  path = str(tmp_path_factory.mktemp('ckpt') / 'ckpt.msgpack')
  checkpoint.save(path, variables, {'image_shape': [8, 8, 1]})
  return path


def _truncate(path, tmp):
  out = os.path.join(tmp, 'truncated.msgpack')
  with open(path, 'rb') as f:
    raw = f.read()
  with open(out, 'wb') as f:
    f.write(raw[:len(raw) // 2])
  return out


CHECKPOINT_CASES = [
    ('missing', dict(), FileNotFoundError, 'checkpoint not found: .*nothing.msgpack'),
    ('truncated', dict(), ValueError, 'unreadable .*truncated'),
    ('classes', dict(num_classes=5), ValueError, r'head/kernel: expected \(4, 5\), got \(4, 3\)'),
    ('width', dict(num_filters=8), ValueError, r'head/kernel: expected \(8, 3\), got \(4, 3\)'),
    ('architecture', dict(name='ResNet8'), ValueError, r"missing \['stage1_block0/bn1/bias'"),
    ('channels', dict(image_shape=(8, 8, 3)), ValueError,
     r'have 3 channels, but checkpoint .* was made for 1 \(shape \(8, 8, 1\)\)'),
]


@pytest.mark.parametrize('case, change, error, match', CHECKPOINT_CASES,
                         ids=[c[0] for c in CHECKPOINT_CASES])
def test_bad_checkpoint_is_refused(saved_checkpoint, tmp_path, case, change, error, match):
  path = {'missing': str(tmp_path / 'nothing.msgpack'),
          'truncated': _truncate(saved_checkpoint, tmp_path)}.get(case, saved_checkpoint)
  model = models.create_model(change.get('name', 'ResNetTiny'), change.get('num_classes', 3),
                              num_filters=change.get('num_filters', 4))
  with pytest.raises(error, match=match):
    checkpoint.load(path, model, change.get('image_shape', (8, 8, 1)))


def test_real_divergence_is_reported_not_raised(tmp_path, digits_source):
  task = data.make_task(digits_source, (0, 1, 2), n_train=30, n_test=9, seed=0)
  model = models.create_model('ResNetTiny', 3, num_filters=4)
  variables = models.init_variables(model, jax.random.key(0), (8, 8, 1))
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  hp = sgd.SGD(lr=1e6, batch_size=10, steps=8)
  order = sgd.batch_order(jax.random.key(1), 30, 10, 8)
  result = finetune.finetune(apply_fn, variables['params'], task, hp, order, loss='cross_entropy',
                             eval_every=2, workdir=str(tmp_path), progress=False)
  k = result['diverged_at']
  assert k is not None and 0 < k <= 8
  loss = result['curves'].train_loss
  assert np.all(np.isfinite(loss[:k // 2])) and np.all(np.isnan(loss[k // 2:]))
  with open(tmp_path / 'run.json') as f:
    assert json.load(f)['diverged_at'] == k


def test_stale_progress_of_another_run_is_not_resumed(tmp_path, linear_task):
  t = linear_task
  order = sgd.batch_order(jax.random.key(0), 12, 4, 6)
  hp = sgd.SGD(lr=0.01, batch_size=4, steps=6)
  clean = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='mse', eval_every=2,
                            progress=False)
  # A progress file left by a run with another learning rate, as if it had been killed.
  other = sgd.SGD(lr=0.5, batch_size=4, steps=6)
  finetune.finetune(t.apply_fn, t.w0, t, other, order, loss='mse', eval_every=2,
                    workdir=str(tmp_path), progress=False)
  assert not os.path.exists(tmp_path / 'progress.msgpack')  # removed once a run is done
  again = finetune.finetune(t.apply_fn, t.w0, t, hp, order, loss='mse', eval_every=2,
                            workdir=str(tmp_path), progress=False)
  np.testing.assert_array_equal(again['curves'].train_loss, clean['curves'].train_loss)


def _compare_cmd(workdir, checkpoint):
  return [sys.executable, '-m', 'experiments.compare', '--config', 'ntk_time/configs/smoke.py',
          '--workdir', workdir, f'--config.pretrain.checkpoint={checkpoint}', '--config.finetune.steps=240', '--config.finetune.eval_every=10',
          '--config.finetune.checkpoint_every=10', '--config.finetune.batch_size=(6,)']


def test_killed_compare_resumes_to_the_same_summary(tmp_path, without_timings, smoke_checkpoint):
  """SIGKILL mid-way through a real run, rerun: the summary of an uninterrupted run."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  reference, killed = str(tmp_path / 'reference'), str(tmp_path / 'killed')
  subprocess.run(_compare_cmd(reference, smoke_checkpoint), cwd=ROOT, env=env, check=True,
                 capture_output=True)

  proc = subprocess.Popen(_compare_cmd(killed, smoke_checkpoint), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  runs = os.path.join(killed, 'runs')
  try:
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
      if os.path.isdir(runs) and any(os.path.exists(os.path.join(runs, r, 'progress.msgpack'))
                                     for r in os.listdir(runs)):
        break
      time.sleep(0.005)
    assert proc.poll() is None, 'the run finished before it could be interrupted'
    proc.send_signal(signal.SIGKILL)
  finally:
    proc.wait()
  interrupted = [r for r in os.listdir(runs)
                 if os.path.exists(os.path.join(runs, r, 'progress.msgpack'))]
  assert interrupted and not os.path.exists(os.path.join(runs, interrupted[0], 'run.json'))
  assert not os.path.exists(os.path.join(killed, 'summary.json'))
  # Atomic writes: every file the killed run left is whole (a write cut short leaves
  # only a .tmp-* file, which nothing reads).
  for folder, _, files in os.walk(killed):
    for name in files:
      path = os.path.join(folder, name)
      if name.endswith('.json'):
        wd.read_json(path)
      elif name.endswith('.npz'):
        wd.read_npz(path)
      elif name.endswith('.msgpack'):
        with open(path, 'rb') as f:
          flax.serialization.msgpack_restore(f.read())
  subprocess.run(_compare_cmd(killed, smoke_checkpoint), cwd=ROOT, env=env, check=True,
                 capture_output=True)

  with open(os.path.join(reference, 'summary.json')) as f:
    a = json.load(f)
  with open(os.path.join(killed, 'summary.json')) as f:
    b = json.load(f)
  assert without_timings(a) == without_timings(b)
