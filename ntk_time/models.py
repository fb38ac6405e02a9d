"""Flax ResNets, the frozen-BatchNorm apply function, and head replacement.

One generic `ResNet`; named variants are `functools.partial`s of it. Parameter
paths are stable (`stem_conv`, `stage{i}_block{j}`, `head`) so that pretrained
checkpoints, converted weights and a fresh head line up by name.
"""

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


class BasicBlock(nn.Module):
  """Two 3×3 convolutions (ResNet-18/34)."""
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = nn.Conv(self.filters, (3, 3), padding=1, use_bias=False, name='conv2')(y)
    y = norm(name='bn2', scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != self.filters or self.strides != 1:
      x = nn.Conv(self.filters, (1, 1), self.strides, use_bias=False, name='proj_conv')(x)
      x = norm(name='proj_bn')(x)
    return nn.relu(x + y)


class BottleneckBlock(nn.Module):
  """1×1, 3×3, 1×1 convolutions with 4× expansion (ResNet-50)."""
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.filters, (1, 1), use_bias=False, name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = nn.Conv(self.filters, (3, 3), self.strides, padding=1, use_bias=False, name='conv2')(y)
    y = nn.relu(norm(name='bn2')(y))
    y = nn.Conv(4 * self.filters, (1, 1), use_bias=False, name='conv3')(y)
    y = norm(name='bn3', scale_init=nn.initializers.zeros)(y)
    if x.shape[-1] != 4 * self.filters or self.strides != 1:
      x = nn.Conv(4 * self.filters, (1, 1), self.strides, use_bias=False, name='proj_conv')(x)
      x = norm(name='proj_bn')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet: [N, H, W, C_in] images -> [N, num_classes] logits.

  Attributes:
    stage_sizes: blocks per stage; stage i has num_filters * 2**i filters and
      (for i > 0) halves the resolution.
    block_cls: BasicBlock or BottleneckBlock.
    num_classes: width of the Dense `head`.
    num_filters: filters of the first stage.
    small_images: 3×3 stride-1 stem without max-pool (28×28, 32×32 inputs)
      instead of the ImageNet 7×7 stride-2 stem with a 3×3 max-pool.
  """
  stage_sizes: tuple[int, ...]
  num_classes: int
  block_cls: type = BasicBlock
  num_filters: int = 64
  small_images: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False, features: bool = False):
    """Logits [N, num_classes], or with features=True the pooled features [N, D] under the head."""
    if self.small_images:
      x = nn.Conv(self.num_filters, (3, 3), padding=1, use_bias=False, name='stem_conv')(x)
    else:
      x = nn.Conv(self.num_filters, (7, 7), 2, padding=3, use_bias=False, name='stem_conv')(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name='stem_bn')(x)
    x = nn.relu(x)
    if not self.small_images:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, size in enumerate(self.stage_sizes):
      for j in range(size):
        strides = 2 if i > 0 and j == 0 else 1
        x = self.block_cls(self.num_filters * 2**i, strides, name=f'stage{i}_block{j}')(x, train)
    x = jnp.mean(x, axis=(1, 2))
    if features:
      return x
    return nn.Dense(self.num_classes, name='head')(x)


ResNetTiny = functools.partial(ResNet, stage_sizes=(1,), num_filters=4, small_images=True)
ResNet8 = functools.partial(ResNet, stage_sizes=(1, 1, 1), num_filters=16, small_images=True)
ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckBlock)
VARIANTS = ('ResNetTiny', 'ResNet8', 'ResNet18', 'ResNet34', 'ResNet50')


def create_model(name: str, num_classes: int, **overrides) -> ResNet:
  """A named variant, e.g. create_model('ResNet8', 5, num_filters=32)."""
  if name not in VARIANTS:
    raise ValueError(f'unknown model {name!r}; expected one of {VARIANTS}')
  return globals()[name](num_classes=num_classes, **overrides)


def model_from_config(cfg, num_classes: int) -> ResNet:
  """The model of a `model` config block: name plus optional overrides."""
  overrides = {}
  if cfg.get('num_filters'):
    overrides['num_filters'] = cfg.num_filters
  if cfg.get('small_images') is not None:
    overrides['small_images'] = cfg.small_images
  return create_model(cfg.name, num_classes, **overrides)


def init_variables(model: ResNet, key: jax.Array, image_shape: tuple[int, int, int]) -> PyTree:
  """{'params', 'batch_stats'} for inputs of shape [H, W, C]."""
  return flax.core.unfreeze(model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False))


def make_apply_fn(model: ResNet, batch_stats: PyTree) -> ApplyFn:
  """`apply_fn(params, x) -> logits` with BatchNorm frozen (inference mode).

  The running statistics are closed over, so the outputs of one image never
  depend on the other images of a batch. This is what makes the per-sample
  kernel (`vmap_axes=0`) valid, and it is the one function that the NTK, the
  simulators and the real fine-tuning all use (DESIGN §3).

  Args:
    model: the ResNet.
    batch_stats: its BatchNorm running statistics.

  Returns:
    apply_fn(params, x: [N, H, W, C]) -> [N, num_classes].
  """
  def apply_fn(params, x):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
  return apply_fn


def make_features_fn(model: ResNet, batch_stats: PyTree) -> ApplyFn:
  """`features_fn(params, x) -> [N, D]`, the pooled features the head reads (BatchNorm frozen)."""
  def features_fn(params, x):
    return model.apply({'params': params, 'batch_stats': batch_stats}, x, train=False,
                       features=True)
  return features_fn


def _shapes(tree: PyTree) -> dict[str, tuple]:
  flat = flax.traverse_util.flatten_dict(tree, sep='/')
  return {k: tuple(np.shape(v)) for k, v in flat.items()}


def check_compatible(expected: PyTree, got: PyTree, what: str) -> None:
  """Raises ValueError listing missing, unexpected and mis-shaped entries."""
  want, have = _shapes(expected), _shapes(got)
  missing = sorted(set(want) - set(have))
  extra = sorted(set(have) - set(want))
  shape = sorted(f'{k}: expected {want[k]}, got {have[k]}' for k in set(want) & set(have)
                 if want[k] != have[k])
  if missing or extra or shape:
    parts = []
    if missing:
      parts.append(f'missing {missing[:5]}{" ..." if len(missing) > 5 else ""}')
    if extra:
      parts.append(f'unexpected {extra[:5]}{" ..." if len(extra) > 5 else ""}')
    if shape:
      parts.append(f'shape mismatch {shape[:5]}{" ..." if len(shape) > 5 else ""}')
    raise ValueError(f'{what} does not match the model: ' + '; '.join(parts))


def replace_head(model: ResNet, pretrained: PyTree, key: jax.Array,
                 image_shape: tuple[int, int, int]) -> PyTree:
  """Pretrained backbone + a fresh `model.num_classes`-way Dense head.

  The head is Flax's default Dense initialisation (LeCun-normal kernel, zero
  bias) from `key`, never zeros: a zero head makes the backbone Jacobian
  vanish and turns the prediction into a linear probe (DESIGN §3); a zero or
  linear-probe head is an explicit option (finetune.init_head).

  Args:
    model: the target model (its num_classes is the new head's width).
    pretrained: {'params', 'batch_stats'} of the source model, any head.
    key: PRNG key of the new head.
    image_shape: [H, W, C] of the inputs.

  Returns:
    {'params', 'batch_stats'} of the target model.
  """
  fresh = init_variables(model, key, image_shape)
  backbone = {k: v for k, v in pretrained['params'].items() if k != 'head'}
  want = {k: v for k, v in fresh['params'].items() if k != 'head'}
  check_compatible(want, backbone, 'pretrained backbone')
  check_compatible(fresh['batch_stats'], pretrained['batch_stats'], 'pretrained batch statistics')
  params = dict(jax.tree.map(jnp.asarray, backbone), head=fresh['params']['head'])
  return {'params': params, 'batch_stats': jax.tree.map(jnp.asarray, pretrained['batch_stats'])}


def num_params(params: PyTree) -> int:
  return int(sum(np.size(x) for x in jax.tree.leaves(params)))
