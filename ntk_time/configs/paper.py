r"""The paper's protocol: an ImageNet ResNet-18 fine-tuned on a tensorflow-datasets target.

For a user with a GPU and internet (nothing here downloads at run time):

  # once: the data, and torchvision's ImageNet weights converted to a checkpoint
  python -c "import tensorflow_datasets as tfds; tfds.load('cifar10')"
  wget https://download.pytorch.org/models/resnet18-f37072fd.pth
  pip install -r requirements-torch.txt
  python -m experiments.convert_torchvision --arch=resnet18 \
      --weights=resnet18-f37072fd.pth --out=checkpoints/resnet18_imagenet.msgpack
  # then, for any of the DATASETS below:
  python -m experiments.compare --config=ntk_time/configs/paper.py:cifar10 \
      --workdir=workdirs/paper/cifar10

Target: the first 10 classes of the dataset, 20 training images per class
(N = 200, C = 10) and 200 test images, resized to 224×224 and normalised with
ImageNet's statistics; an 8-point SGD grid (lr × B × momentum), 400 steps;
the full logit kernel. N·C is set by memory: the direct kernel holds J
(N·C·P floats: 90 GB for ResNet-18's 11.2M parameters), which fits one 141 GB
GPU; larger N needs a smaller N·C or the traced kernel.

Expected cost on one GPU (an estimate from FLOP counts, not measured here: no
GPU was available when this was written): J is N·C = 2,000 backward passes of
ResNet-18 at 224² (≈ 11 TFLOP) and J Jᵀ is 2(NC)²P ≈ 90 TFLOP, so the kernel
takes on the order of a minute in float32; the 8 × 400 real steps at B ≤ 50
are ≈ 0.4 PFLOP, minutes; the simulations, seconds.
"""

from ntk_time.configs import default

# tfds name -> (classes in the dataset, training split with >= 20 images per class).
DATASETS = {
    'cifar10': (10, 'train'),
    'cifar100': (100, 'train'),
    'caltech_birds2011': (200, 'train'),
    'oxford_flowers102': (102, 'train+validation'),  # 'train' alone has 10 per class
    'dtd': (47, 'train'),
}


def get_config(dataset: str = 'cifar10'):
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r} for the paper config; expected one of '
                     f'{tuple(DATASETS)}')
  _, train_split = DATASETS[dataset]
  c = default.get_config()
  # The source is ImageNet; its weights come from the checkpoint, so its data are never read.
  c.source.update(source='tfds:imagenet2012', classes=tuple(range(1000)), n_train=-1, n_test=-1,
                  image_size=224, normalize='imagenet')
  c.model.update(name='ResNet18', num_filters=64, small_images=False)
  c.pretrain.checkpoint = 'checkpoints/resnet18_imagenet.msgpack'
  c.target.update(source=f'tfds:{dataset}', classes=tuple(range(10)), n_train=200, n_test=200,
                  image_size=224, normalize='imagenet', train_split=train_split,
                  test_split='test')
  c.finetune.update(lr=(0.001, 0.005), batch_size=(10, 50), momentum=(0.0, 0.9), steps=400,
                    eval_every=20)
  c.kernel.update(block_size=10, memory_gb=130.0, drift_samples=50)
  return c
