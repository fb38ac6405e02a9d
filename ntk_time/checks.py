"""`check`, which every experiment calls on its config before doing any work.

Checks everything that can be known without loading data or weights, and
names the first bad value.
"""

import copy
import math
import os

from ntk_time import data
from ntk_time import finetune
from ntk_time import losses
from ntk_time import models
from ntk_time import ntk
from ntk_time import predict
from ntk_time import sgd
from ntk_time import times


def _positive_int(value, name: str, minimum: int = 1, what: str = '') -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise ValueError(f'{name}{what} must be an integer >= {minimum}, got {name}={value!r}')


def _positive_float(value, name: str, allow_zero: bool = False) -> None:
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  if not ok or value < 0 or (value == 0 and not allow_zero):
    bound = '>= 0' if allow_zero else '> 0'
    raise ValueError(f'{name} must be a finite number {bound}, got {name}={value!r}')


def _check_fields(config, schema, prefix: str = '') -> None:
  """Rejects fields the experiments do not read (a typo, or an option that does not exist)."""
  for name in config.keys():
    if name not in schema:
      hint = ''
      if name in ('optimizer', 'optimiser'):
        hint = ('; fine-tuning is SGD, set by finetune.momentum, nesterov, weight_decay and '
                'schedule')
      raise ValueError(f'unknown config field {prefix}{name}={config[name]!r}{hint}')
    if hasattr(config[name], 'keys') and hasattr(schema[name], 'keys'):
      _check_fields(config[name], schema[name], f'{prefix}{name}.')


def _check_data(block, name: str) -> None:
  source = block.source
  if source not in data.SOURCES and not (source.startswith('tfds:') and len(source) > 5):
    raise ValueError(f"unknown {name}.source={source!r}; expected one of {data.SOURCES} or "
                     "'tfds:<name>'")
  classes = list(block.classes)
  if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
    raise ValueError(f'{name}.classes must be distinct non-negative class ids, got {classes}')
  for field in ('n_train', 'n_test'):
    n = block[field]
    if n != -1:
      _positive_int(n, f'{name}.{field}', minimum=len(classes),
                    what=' (one per class at least, or -1 for all)')
  normalize = block.get('normalize', 'dataset')
  if normalize not in data.NORMALIZE:
    raise ValueError(f'unknown {name}.normalize={normalize!r}; expected one of '
                     f'{data.NORMALIZE}')
  if block.get('image_size'):
    _positive_int(block.image_size, f'{name}.image_size')


def check(config) -> list[sgd.SGD]:
  """Raises ValueError naming the first bad value of an experiment config.

  Checks everything that can be known without loading data or weights (those
  are checked where they are loaded: `data.make_task`, `checkpoint.load`), so
  that a typo fails in a second, not after pretraining.

  Returns:
    The fine-tuning grid, each point validated.
  """
  from ntk_time.configs import default  # pylint: disable=g-import-not-at-top
  _check_fields(config, default.get_config())
  _positive_int(config.seed, 'seed', minimum=0)
  _check_data(config.source, 'source')
  _check_data(config.target, 'target')
  if config.model.name not in models.VARIANTS:
    raise ValueError(f'unknown model.name={config.model.name!r}; expected one of '
                     f'{models.VARIANTS}')
  p = config.pretrain
  if p.checkpoint:
    if not os.path.isfile(p.checkpoint):
      raise FileNotFoundError(f'pretrain.checkpoint={p.checkpoint!r} does not exist')
  else:
    _positive_int(p.epochs, 'pretrain.epochs')
    _positive_int(p.batch_size, 'pretrain.batch_size')
    if config.source.n_train != -1 and p.batch_size > config.source.n_train:
      raise ValueError(f'pretrain.batch_size={p.batch_size} is larger than the source set '
                       f'(source.n_train={config.source.n_train})')
    _positive_float(p.lr, 'pretrain.lr')
    _positive_float(p.weight_decay, 'pretrain.weight_decay', allow_zero=True)

  ft = config.finetune
  if ft.loss not in losses.LOSSES:
    raise ValueError(f'unknown finetune.loss={ft.loss!r}; expected one of {losses.LOSSES}')
  for field in ('lr', 'batch_size', 'momentum', 'weight_decay'):
    if not len(ft[field]):
      raise ValueError(f'finetune.{field} is an empty list: the grid has no configurations')
  _positive_int(ft.seeds, 'finetune.seeds')
  _positive_int(ft.steps, 'finetune.steps', what=' (the horizon)')
  _positive_int(ft.eval_every, 'finetune.eval_every')
  if ft.steps % ft.eval_every:
    raise ValueError(f'finetune.eval_every={ft.eval_every} must divide the horizon '
                     f'finetune.steps={ft.steps}')
  _positive_int(ft.checkpoint_every, 'finetune.checkpoint_every')
  if ft.checkpoint_every % ft.eval_every:
    raise ValueError(f'finetune.checkpoint_every={ft.checkpoint_every} must be a multiple of '
                     f'finetune.eval_every={ft.eval_every}')
  if ft.sampling not in sgd.SAMPLINGS:
    raise ValueError(f'unknown finetune.sampling={ft.sampling!r}; expected one of {sgd.SAMPLINGS}')
  if ft.head_init not in finetune.HEAD_INITS:
    raise ValueError(f'unknown finetune.head_init={ft.head_init!r}; expected one of '
                     f'{finetune.HEAD_INITS}')
  _positive_float(ft.probe_l2, 'finetune.probe_l2')
  grid = sgd.grid(ft)  # each point checks its own lr, momentum, batch size, schedule
  if config.target.n_train != -1:
    for hp in grid:
      hp.validate(config.target.n_train)

  k = config.kernel
  if k.implementation not in ntk.IMPLEMENTATIONS:
    raise ValueError(f'unknown kernel.implementation={k.implementation!r}; expected one of '
                     f'{ntk.IMPLEMENTATIONS}')
  _positive_int(k.block_size, 'kernel.block_size')
  _positive_float(k.memory_gb, 'kernel.memory_gb')
  _positive_int(k.drift_samples, 'kernel.drift_samples', minimum=0)
  _positive_int(k.sketch_dim, 'kernel.sketch_dim', minimum=0)
  _positive_int(k.sketch_seed, 'kernel.sketch_seed', minimum=0)
  if k.sketch_kind not in ntk.SKETCH_KINDS:
    raise ValueError(f'unknown kernel.sketch_kind={k.sketch_kind!r}; expected one of '
                     f'{ntk.SKETCH_KINDS}')
  if k.sketch_dim and k.implementation != 'direct':
    raise ValueError(f'kernel.sketch_dim={k.sketch_dim} needs kernel.implementation=\'direct\', '
                     f'got {k.implementation!r}')

  pc = config.predict
  _positive_int(pc.num_paths, 'predict.num_paths')
  _positive_int(pc.dt, 'predict.dt')
  if ft.eval_every % pc.dt:
    raise ValueError(f'predict.dt={pc.dt} must divide finetune.eval_every={ft.eval_every}')
  unknown = [m for m in pc.methods if m not in predict.METHODS]
  if not pc.methods or unknown or len(set(pc.methods)) != len(pc.methods):
    raise ValueError(f'predict.methods must be distinct names from {predict.METHODS}, got '
                     f'{tuple(pc.methods)}')
  if pc.methods and pc.methods[0] in predict.NOT_TRAINING_FREE:
    raise ValueError(f'predict.methods={tuple(pc.methods)} starts with {pc.methods[0]!r}, which '
                     'trains real steps before it predicts: it is not training-free and can '
                     "never be the headline; put a training-free method first (e.g. 'sde')")
  relin_probe(pc, grid)
  if 'relinearised' in pc.methods and ft.schedule != 'constant':
    # The probe is a k-step run, whose schedule would not be the real run's first k steps'.
    raise ValueError("predict.methods has 'relinearised', whose probe needs "
                     f"finetune.schedule='constant', got {ft.schedule!r}")
  for m in ('head_aware', 'head_scaled'):
    if m in pc.methods and ft.head_init == 'zero':
      # Its feature kernel is estimated through the head: tr(Wᵀ G W) / tr(WᵀW), ntk.feature_kernel.
      raise ValueError(f"predict.methods has {m!r}, which estimates the feature kernel "
                       "through the head: it needs a non-zero one, got finetune.head_init='zero'")
  if 'nt_gradient_descent' in pc.methods and not ntk.nt_available():
    raise ValueError("predict.methods has 'nt_gradient_descent', which needs neural-tangents "
                     '(not importable here)')
  if 'nt_gradient_descent' in pc.methods and any(
      hp.schedule != 'constant' or hp.nesterov or hp.weight_decay for hp in grid):
    raise ValueError("predict.methods has 'nt_gradient_descent', whose gradient flow has no "
                     'schedule, Nesterov or weight decay; the grid has one of them')
  hf = pc.horizon_fraction
  if isinstance(hf, bool) or not isinstance(hf, (int, float)) or not 0 < hf <= 1:
    raise ValueError(f'predict.horizon_fraction must be in (0, 1], got {hf!r}')
  _positive_int(pc.rank, 'predict.rank', minimum=0)
  _positive_float(pc.rank_tol, 'predict.rank_tol', allow_zero=True)
  if pc.rank and pc.rank_tol:
    raise ValueError(f'predict.rank={pc.rank} and predict.rank_tol={pc.rank_tol} are both set; '
                     'set one (rank_tol chooses the rank)')
  if (pc.rank or pc.rank_tol) and not set(pc.methods) & set(predict.LOW_RANK_METHODS):
    raise ValueError(f'predict.rank={pc.rank}, predict.rank_tol={pc.rank_tol} is for the methods '
                     f'{predict.LOW_RANK_METHODS}; predict.methods={tuple(pc.methods)} has none')
  if pc.rank and config.target.n_train != -1:
    rows = config.target.n_train * (1 if k.traced else len(config.target.classes))
    if pc.rank > rows:
      raise ValueError(f'predict.rank={pc.rank} is more than the {rows} rows of the kernel '
                       f"({'class-traced, ' if k.traced else ''}target.n_train="
                       f'{config.target.n_train})')
  _positive_int(pc.feature_rank, 'predict.feature_rank')
  ftol = pc.feature_rank_tol
  if isinstance(ftol, bool) or not isinstance(ftol, (int, float)) or not 0 <= ftol < 1:
    raise ValueError(f'predict.feature_rank_tol must be in [0, 1), got {ftol!r}')
  _positive_int(pc.feature_seed, 'predict.feature_seed', minimum=0)
  gamma = pc.feature_scale_power
  if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 <= gamma <= 1:
    raise ValueError(f'predict.feature_scale_power must be in [0, 1] (the feature kernel grows '
                     f'as s^(2γ), between s^0 and s^2), got {gamma!r}')
  if pc.dtype not in ('float32', 'float64'):
    raise ValueError(f"predict.dtype must be 'float32' or 'float64', got {pc.dtype!r}")
  targets_from_config(pc)
  return grid


def relin_probe(pc, grid: list[sgd.SGD]) -> tuple[int, int]:
  """The probe of 'relinearised' in a `predict` block: (the index of the configuration
  of `grid` it trains, its real steps k = round(relin_fraction × T)); k >= 1 and k < T
  are checked where 'relinearised' is among the methods."""
  f, i = pc.relin_fraction, pc.relin_config
  if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
    raise ValueError(f'predict.relin_fraction must be in (0, 1), got {f!r}')
  if isinstance(i, bool) or not isinstance(i, int) or not -1 <= i < len(grid):
    raise ValueError(f'predict.relin_config must be -1 (the median η/(1−m)) or an index into '
                     f'the grid of {len(grid)} configurations, got {i!r}')
  if i == -1:
    effective = [hp.lr / (1.0 - hp.momentum) for hp in grid]
    i = sorted(range(len(grid)), key=lambda j: effective[j])[(len(grid) - 1) // 2]
  horizon = grid[i].steps
  k = int(round(f * horizon))
  if 'relinearised' in pc.methods and not 1 <= k < horizon:
    raise ValueError(f'predict.relin_fraction={f!r} of the horizon T={horizon} of configuration '
                     f'{i} is k={k} real steps; relinearised needs 1 <= k < T')
  return i, k


def check_subset(config) -> None:
  """Raises ValueError naming the first bad value of a subset-study config
  (configs/subset.py, configs/paper_scale.py), its experiment under each loss included."""
  _check_fields(config, {'experiment': None, 'sizes': None, 'losses': None, 'epochs': None,
                         'eval_samples': None})
  sizes = list(config.sizes)
  if not sizes or any(isinstance(m, bool) or not isinstance(m, int) or m < 2 for m in sizes):
    raise ValueError(f'sizes must be integers >= 2, got sizes={sizes}')
  n = config.experiment.target.n_train
  if n != -1 and max(sizes) > n:
    raise ValueError(f'sizes={sizes} has a subset larger than target.n_train={n}')
  if not config.losses or len(set(config.losses)) != len(config.losses):
    raise ValueError(f'losses must be distinct names from {losses.LOSSES}, got '
                     f'{tuple(config.losses)}')
  _positive_int(config.epochs, 'epochs', minimum=0, what=' (0: finetune.steps)')
  _positive_int(config.eval_samples, 'eval_samples', minimum=0, what=' (0: all)')
  if n != -1 and config.eval_samples > n:
    raise ValueError(f'eval_samples={config.eval_samples} is more than target.n_train={n}')
  for loss in config.losses:
    e = copy.deepcopy(config.experiment)
    e.finetune.loss = loss
    check(e)


def targets_from_config(pc) -> times.Targets:
  """The training-time definitions of a `predict` block."""
  levels = tuple(pc.levels)
  if not levels or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not f > 1
                       for f in levels) or len({f'{f:g}' for f in levels}) != len(levels):
    raise ValueError(f'predict.levels must be distinct fractions f > 1 (times to reach L0/f), '
                     f'got {levels!r}')
  _positive_float(pc.eps, 'predict.eps')
  _positive_float(pc.eps_acc, 'predict.eps_acc')
  return times.Targets(eps=pc.eps, eps_acc=pc.eps_acc, levels=tuple(float(f) for f in levels))
