"""Datasets as plain numpy arrays, and source / target tasks built from them.

Sources (the `source` string of a data config):
  'fashion_mnist'   IDX files, default folder /usr/share/datasets/fashion-mnist
                    (Debian package `dataset-fashion-mnist`), 28×28×1.
  'digits'          scikit-learn's bundled `load_digits`, 1,797 real 8×8×1 digits.
  'tfds:<name>'     any tensorflow-datasets dataset (cifar10, caltech_birds2011,
                    oxford_flowers102, ...) read from `data_dir`; never downloads.

Images come out as [N, H, W, C] float32, labels as [N] int32. Pixels in [0, 1]
are standardised per channel, with `normalize`:
  'dataset'   the mean and standard deviation of the source's training split;
  'imagenet'  ImageNet's (what torchvision's pretrained ResNets expect; 3 channels).
"""

import dataclasses
import gzip
import os
import struct

import numpy as np

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal',
                         'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
# load_digits has no test split; the last 497 images (about 28%) are held out.
DIGITS_N_TRAIN = 1300
# The sources that need no download; any 'tfds:<name>' is also accepted.
SOURCES = ('fashion_mnist', 'digits')
NORMALIZE = ('dataset', 'imagenet')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Split:
  """A labelled split. images: [N, H, W, C] float32, labels: [N] int32."""
  images: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Source:
  train: Split
  test: Split
  class_names: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Task:
  """A classification task with labels relabelled 0..C-1 in `classes` order.

  x_train: [N, H, W, C] float32; y_train: [N] int32; x_test: [N_test, H, W, C];
  y_test: [N_test]; classes: source class ids; class_names: their names.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  classes: tuple[int, ...]
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.classes)


def _read_idx(path: str) -> np.ndarray:
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'missing data file {path}; install the Debian package dataset-fashion-mnist '
        '(apt-get update && apt-get install dataset-fashion-mnist) or set data.data_dir')
  with gzip.open(path, 'rb') if path.endswith('.gz') else open(path, 'rb') as f:
    raw = f.read()
  magic, = struct.unpack('>I', raw[:4])
  ndim = magic & 0xFF
  if magic >> 8 != 0x08 or ndim not in (1, 3):
    raise ValueError(f'{path} is not an unsigned-byte IDX file (magic {magic:#x})')
  shape = struct.unpack('>' + 'I' * ndim, raw[4:4 + 4 * ndim])
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f'{path} is truncated: expected {int(np.prod(shape))} values, found {data.size}')
  return data.reshape(shape)


def _fashion_mnist(data_dir: str | None) -> Source:
  d = data_dir or FASHION_MNIST_DIR

  def split(prefix):
    x = _read_idx(os.path.join(d, f'{prefix}-images-idx3-ubyte.gz'))[..., None]
    y = _read_idx(os.path.join(d, f'{prefix}-labels-idx1-ubyte.gz'))
    return Split(x.astype(np.float32) / 255.0, y.astype(np.int32))

  return Source(split('train'), split('t10k'), FASHION_MNIST_CLASSES)


def _digits() -> Source:
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = (d.images.astype(np.float32) / 16.0)[..., None]
  y = d.target.astype(np.int32)
  n = DIGITS_N_TRAIN
  return Source(Split(x[:n], y[:n]), Split(x[n:], y[n:]), tuple(str(c) for c in d.target_names))


def _tfds(name: str, data_dir: str | None, image_size: int | None, train_split: str,
          test_split: str) -> Source:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')  # keep TF off the accelerator JAX uses
  builder = tfds.builder(name, data_dir=data_dir)
  label_feature = builder.info.features['label']

  def split(s):
    try:
      # Not as_supervised: some datasets (dtd) do not declare a supervised pair.
      ds = builder.as_dataset(split=s)
    except (AssertionError, ValueError, FileNotFoundError) as e:
      raise FileNotFoundError(
          f'tensorflow-datasets {name!r} split {s!r} is not readable under '
          f'data_dir={builder.data_dir!r} ({e}); prepare it once with tfds.load({name!r}, '
          f'data_dir=...) on a machine with internet') from e
    ds = ds.map(lambda ex: (tf.cast(ex['image'], tf.float32), ex['label']))
    if image_size:
      ds = ds.map(lambda x, y: (tf.image.resize(x, (image_size, image_size)), y))
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(256)):
      xs.append(x)
      ys.append(y)
    if not xs:
      raise ValueError(f'tensorflow-datasets {name!r} split {s!r} is empty')
    return Split(np.concatenate(xs) / 255.0, np.concatenate(ys).astype(np.int32))

  return Source(split(train_split), split(test_split), tuple(label_feature.names))


def load_source(source: str, data_dir: str | None = None, image_size: int | None = None,
                train_split: str = 'train', test_split: str = 'test',
                normalize: str = 'dataset') -> Source:
  """Loads a whole source dataset, standardised, resized to `image_size` if given."""
  if normalize not in NORMALIZE:
    raise ValueError(f'unknown normalize={normalize!r}; expected one of {NORMALIZE}')
  if source == 'fashion_mnist':
    src = _fashion_mnist(data_dir)
  elif source == 'digits':
    src = _digits()
  elif source.startswith('tfds:') and len(source) > 5:
    src = _tfds(source[5:], data_dir, image_size, train_split, test_split)
  else:
    raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES} or "
                     "'tfds:<name>'")
  if image_size and src.train.images.shape[1:3] != (image_size, image_size):
    src = Source(_resize(src.train, image_size), _resize(src.test, image_size), src.class_names)
  if normalize == 'imagenet':
    if src.train.images.shape[-1] != 3:
      raise ValueError(f"normalize='imagenet' needs RGB images; {source} has "
                       f'{src.train.images.shape[-1]} channels')
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
  else:
    mean = src.train.images.mean(axis=(0, 1, 2), dtype=np.float64)
    std = src.train.images.std(axis=(0, 1, 2), dtype=np.float64)
  norm = lambda s: Split(((s.images - mean) / std).astype(np.float32), s.labels)
  return Source(norm(src.train), norm(src.test), src.class_names)


def _resize(s: Split, size: int) -> Split:
  import jax  # pylint: disable=g-import-not-at-top
  n, _, _, c = s.images.shape
  out = jax.image.resize(s.images, (n, size, size, c), method='bilinear')
  return Split(np.asarray(out, dtype=np.float32), s.labels)


def check_images(images: np.ndarray, labels: np.ndarray, num_classes: int, what: str) -> None:
  """Raises ValueError naming the problem for malformed images or labels."""
  if images.ndim != 4:
    raise ValueError(f'{what} images must be [N, H, W, C]; got shape {images.shape}')
  if labels.shape != (images.shape[0],):
    raise ValueError(f'{what} labels must be [N={images.shape[0]}]; got shape {labels.shape}')
  bad = ~np.isfinite(images)
  if bad.any():
    i = int(np.argwhere(bad.reshape(len(images), -1).any(axis=1))[0, 0])
    raise ValueError(f'{what} images contain NaN/inf ({int(bad.sum())} values, first in image {i})')
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{what} labels must be in 0..{num_classes - 1}; got range '
                     f'[{labels.min()}, {labels.max()}]')


def _select(s: Split, classes: tuple[int, ...], n: int, rng: np.random.Generator,
            what: str) -> tuple[np.ndarray, np.ndarray]:
  """A class-stratified random subset of n samples (n = -1: all), relabelled."""
  pools = [np.flatnonzero(s.labels == c) for c in classes]
  for c, p in zip(classes, pools):
    if p.size == 0:
      raise ValueError(f'class {c} has no {what} samples')
  available = sum(p.size for p in pools)
  if n == -1:
    idx = np.concatenate(pools)
  else:
    if n < len(classes) or n > available:
      raise ValueError(f'asked for {n} {what} samples of classes {list(classes)}, but only '
                       f'{available} exist (and at least one per class is needed)')
    share = np.full(len(classes), n // len(classes))
    share[:n % len(classes)] += 1
    short = [c for c, p, k in zip(classes, pools, share) if k > p.size]
    if short:
      raise ValueError(f'asked for {n} {what} samples, balanced over classes {list(classes)}, '
                       f'but classes {short} have too few')
    idx = np.concatenate([rng.choice(p, k, replace=False) for p, k in zip(pools, share)])
  idx = rng.permutation(idx)
  relabel = np.full(max(s.labels.max(), max(classes)) + 1, -1, np.int32)
  relabel[list(classes)] = np.arange(len(classes))
  return s.images[idx], relabel[s.labels[idx]]


def make_task(source: Source, classes, n_train: int, n_test: int, seed: int) -> Task:
  """Selects `classes` (relabelled 0..C-1 in the given order) and seeded subsets.

  Args:
    source: from `load_source`.
    classes: source class ids, e.g. (5, 6, 7, 8, 9).
    n_train: training samples, balanced over classes; -1 for all.
    n_test: held-out samples from the source's test split; -1 for all.
    seed: the subset and its order depend only on this.
  """
  classes = tuple(int(c) for c in classes)
  num = len(source.class_names)
  if not classes or len(set(classes)) != len(classes):
    raise ValueError(f'classes must be distinct and non-empty, got {list(classes)}')
  unknown = [c for c in classes if not 0 <= c < num]
  if unknown:
    raise ValueError(f'unknown classes {unknown}: the source has classes 0..{num - 1}')
  rng = np.random.default_rng(seed)
  x_train, y_train = _select(source.train, classes, n_train, rng, 'training')
  x_test, y_test = _select(source.test, classes, n_test, rng, 'test')
  check_images(x_train, y_train, len(classes), 'training')
  check_images(x_test, y_test, len(classes), 'test')
  return Task(x_train, y_train, x_test, y_test, classes,
              tuple(source.class_names[c] for c in classes))


def task_from_config(cfg) -> Task:
  """The task of a `data` config block (see ntk_time/configs/)."""
  src = load_source(cfg.source, cfg.get('data_dir') or None, cfg.get('image_size') or None,
                    cfg.get('train_split', 'train'), cfg.get('test_split', 'test'),
                    cfg.get('normalize', 'dataset'))
  return make_task(src, cfg.classes, cfg.n_train, cfg.n_test, cfg.seed)
