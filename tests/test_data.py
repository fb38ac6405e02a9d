"""Data sources, task construction and input checks."""

import gzip
import os
import struct

import numpy as np
import pytest

from ntk_time import data


def _write_idx(path, arr):
  header = struct.pack('>I', 0x0800 | arr.ndim) + struct.pack('>' + 'I' * arr.ndim, *arr.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + arr.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion_dir(tmp_path):
  rng = np.random.default_rng(0)
  for prefix, n in (('train', 60), ('t10k', 30)):
    _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', rng.integers(0, 256, (n, 28, 28)))
    _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  return str(tmp_path)


def test_fashion_mnist_idx_reader(fake_fashion_dir):
  src = data.load_source('fashion_mnist', data_dir=fake_fashion_dir)
  assert src.train.images.shape == (60, 28, 28, 1) and src.train.images.dtype == np.float32
  assert src.test.images.shape == (30, 28, 28, 1)
  assert src.class_names[9] == 'Ankle boot'
  # Standardised with the training split's statistics.
  assert abs(src.train.images.mean()) < 1e-5 and abs(src.train.images.std() - 1) < 1e-4


@pytest.mark.skipif(not os.path.exists(os.path.join(data.FASHION_MNIST_DIR,
                                                    'train-images-idx3-ubyte.gz')),
                    reason='the Debian package dataset-fashion-mnist is not installed')
def test_real_fashion_mnist():
  src = data.load_source('fashion_mnist')
  assert src.train.images.shape == (60000, 28, 28, 1) and src.test.images.shape == (10000, 28, 28, 1)
  assert np.bincount(src.train.labels).tolist() == [6000] * 10


def test_missing_files_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'train-images-idx3-ubyte.gz')):
    data.load_source('fashion_mnist', data_dir=str(tmp_path))


def test_truncated_idx(fake_fashion_dir):
  path = os.path.join(fake_fashion_dir, 'train-images-idx3-ubyte.gz')
  with gzip.open(path) as f:
    raw = f.read()
  with gzip.open(path, 'wb') as f:
    f.write(raw[:1000])
  with pytest.raises(ValueError, match='truncated'):
    data.load_source('fashion_mnist', data_dir=fake_fashion_dir)


def test_digits_and_resize(digits_source):
  assert digits_source.train.images.shape == (data.DIGITS_N_TRAIN, 8, 8, 1)
  assert len(digits_source.test.images) == 1797 - data.DIGITS_N_TRAIN
  big = data.load_source('digits', image_size=28)
  assert big.train.images.shape == (data.DIGITS_N_TRAIN, 28, 28, 1)
  assert abs(big.train.images.mean()) < 1e-4


def test_task_relabels_and_is_deterministic(digits_source):
  t1 = data.make_task(digits_source, (7, 3, 5), n_train=30, n_test=12, seed=4)
  t2 = data.make_task(digits_source, (7, 3, 5), n_train=30, n_test=12, seed=4)
  t3 = data.make_task(digits_source, (7, 3, 5), n_train=30, n_test=12, seed=5)
  np.testing.assert_array_equal(t1.x_train, t2.x_train)
  assert not np.array_equal(t1.x_train, t3.x_train)
  assert t1.class_names == ('7', '3', '5') and t1.num_classes == 3
  assert np.bincount(t1.y_train).tolist() == [10, 10, 10]
  # Relabelling: every image labelled 0 really is a source "7".
  src_idx = [np.flatnonzero((digits_source.train.images == x).all(axis=(1, 2, 3)))[0]
             for x in t1.x_train[t1.y_train == 0][:3]]
  assert all(digits_source.train.labels[i] == 7 for i in src_idx)


@pytest.mark.parametrize('kwargs, match', [
    (dict(classes=(3, 12), n_train=10, n_test=4), r'unknown classes \[12\]'),
    (dict(classes=(3, 3), n_train=10, n_test=4), 'distinct'),
    (dict(classes=(0, 1), n_train=10_000, n_test=4), 'asked for 10000 training samples'),
    (dict(classes=(0, 1), n_train=10, n_test=1000), 'asked for 1000 test samples'),
])
def test_task_errors(digits_source, kwargs, match):
  with pytest.raises(ValueError, match=match):
    data.make_task(digits_source, seed=0, **kwargs)


def test_unknown_source():
  with pytest.raises(ValueError, match="unknown data source 'mnist'"):
    data.load_source('mnist')


@pytest.mark.parametrize('name', ['cifar10', 'cifar100', 'caltech_birds2011',
                                  'oxford_flowers102', 'dtd'])
def test_paper_config_reads_its_tfds_target_offline(name, tmp_path):
  """Each tfds target of configs/paper.py, through tfds.testing.mock_data (no download)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from ntk_time import checks  # pylint: disable=g-import-not-at-top
  from ntk_time.configs import paper  # pylint: disable=g-import-not-at-top
  config = paper.get_config(name)
  config.pretrain.checkpoint = str(tmp_path / 'imagenet.msgpack')
  open(config.pretrain.checkpoint, 'wb').close()
  assert checks.check(config)
  # Mock data has random labels: take every image of the 10 classes (at least one each), and
  # a small size except for one dataset, which checks the paper's 224×224.
  size = 224 if name == 'cifar10' else 32
  config.target.update(n_train=-1, n_test=-1, image_size=size)
  num_classes, _ = paper.DATASETS[name]
  with tfds.testing.mock_data(num_examples=10 * num_classes):
    task = data.task_from_config(config.target)
  assert task.x_train.shape[1:] == (size, size, 3) and task.x_train.dtype == np.float32
  assert set(np.unique(task.y_train)) == set(range(10))
  # ImageNet normalisation of pixels in [0, 1].
  lo = (0 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
  hi = (1 - np.array(data.IMAGENET_MEAN)) / np.array(data.IMAGENET_STD)
  assert np.all(task.x_train.min(axis=(0, 1, 2)) >= lo - 1e-5)
  assert np.all(task.x_train.max(axis=(0, 1, 2)) <= hi + 1e-5)


def test_imagenet_normalisation_needs_rgb():
  with pytest.raises(ValueError, match="normalize='imagenet' needs RGB images; digits has 1"):
    data.load_source('digits', normalize='imagenet')
