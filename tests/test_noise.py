"""Minibatch sampling: epoch reshuffling against i.i.d. batches (issue 12 item 6)."""

import jax
import numpy as np
import pytest

from ntk_time import sgd


def test_epoch_order_is_unchanged_by_the_new_argument():
  key = jax.random.key(0)
  np.testing.assert_array_equal(sgd.batch_order(key, 10, 3, 7),
                                sgd.batch_order(key, 10, 3, 7, sampling='epoch'))


def test_iid_batches_are_distinct_inside_and_independent_across_steps():
  n, b, steps = 12, 4, 3000
  order = sgd.batch_order(jax.random.key(1), n, b, steps, sampling='iid')
  assert order.shape == (steps, b) and order.dtype == np.int32
  assert order.min() >= 0 and order.max() < n
  assert all(len(set(row)) == b for row in order)  # B distinct samples per batch
  np.testing.assert_array_equal(order, sgd.batch_order(jax.random.key(1), n, b, steps, 'iid'))
  # Uniform: every sample in a batch with probability B/N.
  counts = np.bincount(order.ravel(), minlength=n)
  expected = steps * b / n
  assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
  # Independent across steps: consecutive batches share B²/N samples on average,
  # where an epoch's batches (N/B = 3 a epoch) share none inside the epoch.
  shared = [len(set(order[k]) & set(order[k + 1])) for k in range(steps - 1)]
  assert np.mean(shared) == pytest.approx(b * b / n, abs=0.1)
  epoch = sgd.batch_order(jax.random.key(1), n, b, 3, sampling='epoch')
  assert len(set(epoch.ravel())) == n


def test_bad_sampling_is_refused_by_name():
  with pytest.raises(ValueError, match=r"unknown sampling 'with_replacement'.*'epoch', 'iid'"):
    sgd.batch_order(jax.random.key(0), 10, 3, 7, sampling='with_replacement')
