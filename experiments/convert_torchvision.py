r"""Converts a torchvision ResNet state-dict file into a ntk_time checkpoint.

  pip install -r requirements-torch.txt
  python -m experiments.convert_torchvision --arch=resnet18 \
      --weights=resnet18-f37072fd.pth --out=checkpoints/resnet18_imagenet.msgpack

The .pth file is torchvision's ImageNet weights, downloaded by the user (e.g.
https://download.pytorch.org/models/resnet18-f37072fd.pth); nothing is
downloaded here. The checkpoint is checked entry by entry against the Flax
model and then loads through `--config.pretrain.checkpoint` like weights
pretrained here (see ntk_time/configs/paper.py).
"""

from absl import app
from absl import flags
import jax
import numpy as np

from ntk_time import checkpoint
from ntk_time import convert
from ntk_time import models

IMAGE_SHAPE = (224, 224, 3)


def run(arch: str, weights: str, out: str) -> dict:
  """Converts `weights` (a torchvision state-dict file) for `arch`; returns the meta."""
  import torch  # pylint: disable=g-import-not-at-top
  state = torch.load(weights, map_location='cpu', weights_only=True)
  if not isinstance(state, dict):
    raise ValueError(f'{weights} is not a state dict (got {type(state).__name__}); save '
                     'model.state_dict(), not the model')
  variables = convert.from_torchvision({k: v.numpy() for k, v in state.items()})
  num_classes = variables['params']['head']['kernel'].shape[1]
  model = convert.model_for(arch, num_classes)
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), IMAGE_SHAPE))
  models.check_compatible(expected['params'], variables['params'], f'{weights} as {arch}')
  models.check_compatible(expected['batch_stats'], variables['batch_stats'],
                          f'{weights} as {arch} (batch statistics)')
  meta = {'converted_from': weights, 'arch': arch, 'image_shape': list(IMAGE_SHAPE),
          'model': {'name': convert.TORCHVISION[arch], 'num_filters': 64, 'small_images': False},
          'num_classes': int(num_classes),
          'num_params': int(sum(np.size(v) for v in jax.tree.leaves(variables['params'])))}
  checkpoint.save(out, variables, meta)
  return meta


def main(_):
  meta = run(_ARCH.value, _WEIGHTS.value, _OUT.value)
  print(f"wrote {_OUT.value}: {meta['model']['name']}, {meta['num_params']:,} parameters, "
        f"{meta['num_classes']} classes")


if __name__ == '__main__':
  _ARCH = flags.DEFINE_enum('arch', 'resnet18', list(convert.TORCHVISION), 'architecture')
  _WEIGHTS = flags.DEFINE_string('weights', None, 'torchvision state-dict file', required=True)
  _OUT = flags.DEFINE_string('out', None, 'checkpoint to write', required=True)
  app.run(main)
