"""torchvision ResNet weights -> this project's Flax `ResNet` variables.

The paper fine-tunes ImageNet-pretrained ResNets. Users with internet download
torchvision's state-dict file (e.g. `resnet18-f37072fd.pth`) and convert it once
with `experiments/convert_torchvision.py`; the result is an ordinary checkpoint
that loads through `checkpoint.load` like pretrained weights made here. This
module works on a dict of numpy arrays, so that the library never imports torch.

Name mapping (torchvision -> Flax):
  conv1, bn1                      -> stem_conv, stem_bn
  layer{i+1}.{j}.conv{k}, .bn{k}  -> stage{i}_block{j}/conv{k}, bn{k}
  layer{i+1}.{j}.downsample.0, .1 -> stage{i}_block{j}/proj_conv, proj_bn
  fc                              -> head
Conv kernels [O, I, kh, kw] become [kh, kw, I, O]; Dense [O, I] becomes [I, O];
BatchNorm weight/bias -> params scale/bias, running_mean/var -> batch_stats
mean/var (both use eps = 1e-5).
"""

import numpy as np

from ntk_time import models

PyTree = dict

# The torchvision architectures with a Flax twin here.
TORCHVISION = {'resnet18': 'ResNet18', 'resnet34': 'ResNet34', 'resnet50': 'ResNet50'}


def _flax_name(torch_name: str) -> str:
  parts = torch_name.split('.')
  if parts[0] == 'conv1':
    return 'stem_conv'
  if parts[0] == 'bn1':
    return 'stem_bn'
  if parts[0] == 'fc':
    return 'head'
  if parts[0].startswith('layer'):
    block = f'stage{int(parts[0][5:]) - 1}_block{int(parts[1])}'
    if parts[2] == 'downsample':
      return f"{block}/{'proj_conv' if parts[3] == '0' else 'proj_bn'}"
    return f'{block}/{parts[2]}'
  raise ValueError(f'unexpected torchvision entry {torch_name!r}')


def _put(tree: dict, path: str, leaf: str, value: np.ndarray) -> None:
  for part in path.split('/'):
    tree = tree.setdefault(part, {})
  if leaf in tree:
    raise ValueError(f'two torchvision entries map to {path}/{leaf}')
  tree[leaf] = value


def from_torchvision(state_dict: dict[str, np.ndarray]) -> dict[str, PyTree]:
  """{'params', 'batch_stats'} for `models.ResNet` from a torchvision ResNet state dict.

  Args:
    state_dict: torchvision names -> numpy arrays (torch tensors converted with
      `.numpy()`), e.g. from `torchvision.models.resnet18().state_dict()`.

  Returns:
    Variables with the Flax layout; check them against the model with
    `models.check_compatible` (the converter script does).
  """
  params, stats = {}, {}
  for name, value in state_dict.items():
    value = np.asarray(value)
    *module, kind = name.split('.')
    if kind == 'num_batches_tracked':
      continue
    path = _flax_name('.'.join(module))
    if kind == 'weight' and value.ndim == 4:  # convolution
      _put(params, path, 'kernel', value.transpose(2, 3, 1, 0))
    elif kind == 'weight' and value.ndim == 2:  # the fc head
      _put(params, path, 'kernel', value.T)
    elif kind == 'weight':  # BatchNorm
      _put(params, path, 'scale', value)
    elif kind == 'bias':
      _put(params, path, 'bias', value)
    elif kind == 'running_mean':
      _put(stats, path, 'mean', value)
    elif kind == 'running_var':
      _put(stats, path, 'var', value)
    else:
      raise ValueError(f'unexpected torchvision entry {name!r}')
  return {'params': params, 'batch_stats': stats}


def model_for(arch: str, num_classes: int = 1000) -> models.ResNet:
  """The Flax twin of a torchvision architecture (ImageNet stem, 64 filters)."""
  if arch not in TORCHVISION:
    raise ValueError(f'unknown torchvision architecture {arch!r}; expected one of '
                     f'{tuple(TORCHVISION)}')
  return models.create_model(TORCHVISION[arch], num_classes, num_filters=64, small_images=False)
