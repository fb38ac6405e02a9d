"""The torchvision converter against torchvision itself (random weights, offline)."""

import jax
import numpy as np
import pytest

from experiments import convert_torchvision
from ntk_time import checkpoint
from ntk_time import convert
from ntk_time import models

torch = pytest.importorskip('torch', reason='torch is not installed (requirements-torch.txt)')
torchvision = pytest.importorskip('torchvision',
                                  reason='torchvision is not installed (requirements-torch.txt)')


def _random_torchvision(arch, seed):
  torch.manual_seed(seed)
  net = getattr(torchvision.models, arch)(weights=None, num_classes=7)
  # Fresh BatchNorm is the identity (scale 1, bias 0, mean 0, var 1), which would
  # hide a mix-up of its four entries: randomise them all.
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  return net.eval()


@pytest.mark.parametrize('arch', ['resnet18', 'resnet50'])
def test_converted_resnet_matches_torchvision(arch, tmp_path):
  net = _random_torchvision(arch, seed=0)
  weights = str(tmp_path / f'{arch}.pth')
  torch.save(net.state_dict(), weights)
  out = str(tmp_path / f'{arch}.msgpack')
  meta = convert_torchvision.run(arch, weights, out)
  assert meta['num_classes'] == 7
  assert meta['num_params'] == sum(p.numel() for p in net.parameters())

  model = convert.model_for(arch, 7)
  x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    expected = net(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  variables, _ = checkpoint.load(out, model, (64, 64, 3))
  apply_fn = models.make_apply_fn(model, variables['batch_stats'])
  got = np.asarray(jax.jit(apply_fn)(variables['params'], x))
  scale = np.abs(expected).max()
  assert scale > 0.1  # logits of a real size, so that 1e-4 means something
  np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=1e-4)


def test_wrong_architecture_is_refused(tmp_path):
  weights = str(tmp_path / 'r18.pth')
  torch.save(_random_torchvision('resnet18', seed=1).state_dict(), weights)
  with pytest.raises(ValueError, match='as resnet34 does not match the model: missing'):
    convert_torchvision.run('resnet34', weights, str(tmp_path / 'out.msgpack'))
  assert not (tmp_path / 'out.msgpack').exists()
