"""Tests of the Givens-rotation core: sequences, stopping rule, Markov chain."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eoi_jax import chain, givens


def _last_jump(key, rows, cols, result, density):
  """Non-zero growth of the rotation at which the stopping rule decided."""
  n = int(result.num_rotations)
  traj = np.asarray(givens.support_trajectory(key, rows, cols, n + 1))
  target = math.ceil(density * rows * cols - 1e-9)
  if n > 0 and traj[n] >= target:
    return traj, traj[n] - traj[n - 1]
  return traj, traj[n + 1] - traj[n]


@pytest.mark.parametrize(
    "rows,cols,density",
    [
        (1, 2, 1.0),
        (2, 3, 0.7),
        (1, 50, 0.3),
        (16, 64, 0.25),
        (97, 131, 0.1),
        (128, 128, 0.125),
        (100, 100, 0.5),
        (64, 64, 1.0),
    ],
)
def test_density_within_half_a_step_and_trajectory_matches(rows, cols, density):
  key = jax.random.key(3)
  result = givens.givens_orthogonal(key, rows, cols, density)
  matrix = np.asarray(result.matrix)
  nnz = int(np.count_nonzero(matrix))
  assert nnz == int(result.nnz)
  traj, jump = _last_jump(key, rows, cols, result, density)
  # The boolean support simulation sees the same rotations as the values.
  assert traj[int(result.num_rotations)] == nnz
  assert abs(nnz - density * rows * cols) <= jump / 2 + 1e-9
  np.testing.assert_allclose(matrix @ matrix.T, np.eye(rows), atol=2e-5)


def test_full_density_reaches_every_entry():
  result = givens.givens_orthogonal(jax.random.key(0), 8, 12, 1.0)
  assert int(result.nnz) == 8 * 12
  assert np.all(np.asarray(result.matrix) != 0)


def test_stops_beyond_the_static_bound_exactly():
  # A single row has a heavy-tailed stopping time: many keys overrun the
  # static scan and must be finished by the while loop.
  cols, density = 40, 1.0
  bound = givens.max_rotations(1, cols, density)
  keys = jax.random.split(jax.random.key(1), 64)
  results = jax.vmap(lambda k: givens.givens_orthogonal(k, 1, cols, density))(keys)
  assert np.all(np.asarray(results.nnz) == cols)
  assert np.any(np.asarray(results.num_rotations) > bound)


def test_matrix_equals_its_rotation_sequence_applied():
  key = jax.random.key(7)
  rows, cols = 20, 33
  result = givens.givens_orthogonal(key, rows, cols, 0.4)
  pairs, angles = givens.rotation_sequence(key, cols, int(result.num_rotations))
  replay = givens.apply_rotations(pairs, angles, rows, cols)
  np.testing.assert_array_equal(replay, result.matrix)


def test_rotation_sequence_is_a_prefix_and_pairs_are_valid():
  key = jax.random.key(0)
  pairs, angles = givens.rotation_sequence(key, 10, 2000)
  short_pairs, short_angles = givens.rotation_sequence(key, 10, 50)
  np.testing.assert_array_equal(pairs[:50], short_pairs)
  np.testing.assert_array_equal(angles[:50], short_angles)
  pairs = np.asarray(pairs)
  assert np.all(pairs[:, 0] != pairs[:, 1])
  assert pairs.min() == 0 and pairs.max() == 9
  # Ordered pairs are uniform over the 90 possibilities: chi-square test.
  counts = np.bincount(pairs[:, 0] * 10 + pairs[:, 1], minlength=100)
  counts = counts[[i * 10 + j for i in range(10) for j in range(10) if i != j]]
  expected = len(pairs) / 90
  chi2 = np.sum((counts - expected) ** 2 / expected)
  assert chi2 < 89 + 6 * math.sqrt(2 * 89)  # mean 89, sd sqrt(178)
  angles = np.asarray(angles)
  assert angles.min() >= 0 and angles.max() < 2 * math.pi


def test_mean_rotation_count_matches_the_markov_chain():
  # For one row the stopping step is the chain's hitting time of ceil(d c):
  # a sum of independent geometric waits with known mean and variance.
  cols, density, n_keys = 64, 0.5, 400
  count = math.ceil(density * cols)  # d c = 32 is an integer: no step back
  mean, var = chain.expected_row_hitting_time(cols, count)
  keys = jax.random.split(jax.random.key(11), n_keys)
  used = jax.vmap(lambda k: givens.givens_orthogonal(k, 1, cols, density).num_rotations)(keys)
  used = np.asarray(used, np.float64)
  # The mean of 400 draws is within 5 standard errors with probability
  # 1 - 6e-7; a biased pair or stopping rule moves it by many more.
  assert abs(used.mean() - mean) <= 5 * math.sqrt(var / n_keys)


def test_mean_density_trajectory_matches_the_row_chain():
  # Every row's non-zero count follows the pure-birth chain, so the mean
  # density after t rotations is E[X_t] / c, computed exactly.
  rows, cols, steps, n_keys = 16, 48, 120, 300
  keys = jax.random.split(jax.random.key(5), n_keys)
  traj = jax.vmap(lambda k: givens.support_trajectory(k, rows, cols, steps))(keys)
  density = np.asarray(traj, np.float64) / (rows * cols)
  law = chain.row_chain_distribution(cols, steps)
  expected = law @ np.arange(cols + 1) / cols
  stderr = density.std(axis=0, ddof=1) / math.sqrt(n_keys)
  assert np.all(np.abs(density.mean(axis=0) - expected) <= 5 * stderr + 1e-12)


def test_mean_field_rotations_matches_counts_from_the_paper_code():
  # Counts seen in the public code (method note): 100x100 at 0.5 ~250,
  # 128x128 at 0.125 ~190, 784x300 at 0.1 ~1800.
  assert abs(chain.mean_field_rotations(100, 0.5) - 250) < 30
  assert abs(chain.mean_field_rotations(128, 0.125) - 190) < 15
  assert abs(chain.mean_field_rotations(784, 0.1) - 1800) < 100
  assert chain.mean_field_rotations(100, 0.01) == 0.0


def test_integer_targets_snap_decimal_densities():
  target, undo = givens.integer_targets(0.1, 10, 10)
  assert int(target) == 10 and int(undo) == 20
  target, undo = givens.integer_targets(0.105, 10, 10)
  assert int(target) == 11 and int(undo) == 21


def test_rejects_bad_arguments():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="rows must be <= cols"):
    givens.givens_orthogonal(key, 5, 3, 0.5)
  with pytest.raises(ValueError, match="density"):
    givens.givens_orthogonal(key, 3, 5, 0.0)
  with pytest.raises(ValueError, match="num_cols"):
    givens.rotation_sequence(key, 1, 3)


def test_core_vmaps_over_traced_targets():
  rows, cols = 32, 32
  densities = np.array([0.1, 0.3, 0.6])
  target, undo = givens.integer_targets(densities, rows, cols)
  steps = givens.max_rotations(rows, cols, densities.max())
  keys = jax.random.split(jax.random.key(0), 3)
  results = jax.jit(
      jax.vmap(lambda k, t, u: givens.givens_core(k, rows, cols, t, u, steps))
  )(keys, target, undo)
  for i, d in enumerate(densities):
    single = givens.givens_orthogonal(keys[i], rows, cols, float(d))
    np.testing.assert_array_equal(results.nnz[i], single.nnz)
    np.testing.assert_array_equal(results.matrix[i], single.matrix)


def test_nested_vmap_runs_the_batch_loop_and_equals_single_calls():
  # vmap of the loop becomes one loop over the merged batch (its batching
  # rule), for nested vmaps, mixed batched and unbatched arguments, uint32
  # keys, and under jit and eval_shape.
  rows, cols = 24, 40
  densities = np.array([0.1, 0.45])
  target, undo = givens.integer_targets(densities, rows, cols)
  steps = givens.max_rotations(rows, cols, densities.max())
  for keys in (jax.random.split(jax.random.key(3), 6).reshape(3, 2),
               jax.random.split(jax.random.PRNGKey(3), 6).reshape(3, 2, 2)):
    core = lambda k, t, u: givens.givens_core(k, rows, cols, t, u, steps, rounds=False)
    nested = jax.jit(jax.vmap(jax.vmap(core, in_axes=(0, 0, 0)), in_axes=(0, None, None)))
    results = nested(keys, target, undo)
    shapes = jax.eval_shape(nested, keys, target, undo)
    assert shapes.matrix.shape == (3, 2, rows, cols) == results.matrix.shape
    for i in range(3):
      for j, d in enumerate(densities):
        single = givens.givens_orthogonal(keys[i, j], rows, cols, float(d), rounds=False)
        assert int(results.num_rotations[i, j]) == int(single.num_rotations)
        assert int(results.nnz[i, j]) == int(single.nnz)
        # The batch loop rotates with the arithmetic of one matrix's loop.
        np.testing.assert_array_equal(results.matrix[i, j], single.matrix)


def _words(keys):
  return np.asarray(jax.random.key_data(keys) if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
                    else keys)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_key_splits_equal_jax_random_on_the_host_and_traced(make_key):
  # Concrete keys split on the host (nothing compiled), traced ones in a
  # program; both bit for bit jax.random.split, for typed and uint32 keys.
  compiled = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)

  key = make_key(7)
  keys = jax.random.split(key, 5)
  wants = {n: _words(jax.random.split(key, n)) for n in (1, 3, 1000)}
  want_each = np.concatenate([_words(jax.random.split(keys[i], 4)) for i in (3, 0, 3)])
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    host = {n: givens.split(key, n) for n in wants}
    host_into = givens.split_into(key, 3)
    host_each = givens.split_each(keys, np.array([3, 0, 3]), 4)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiled == []
  host = {n: _words(k) for n, k in host.items()}
  host_into = np.stack([_words(k) for k in host_into])
  host_each = _words(host_each)
  for n, want in wants.items():
    np.testing.assert_array_equal(host[n], want)
    np.testing.assert_array_equal(_words(jax.jit(lambda k, n=n: givens.split(k, n))(key)), want)
  np.testing.assert_array_equal(host_into, wants[3])
  np.testing.assert_array_equal(host_each, want_each)
  traced_each = jax.jit(lambda k: givens.split_each(k, np.array([3, 0, 3]), 4))(keys)
  np.testing.assert_array_equal(_words(traced_each), want_each)


def test_below_is_the_exact_multiply_high():
  words = np.random.default_rng(0).integers(0, 2**32, size=2000, dtype=np.uint64)
  words = np.concatenate([words, [0, 1, 2**32 - 1, 2**31]]).astype(np.uint64)
  for n in [2, 3, 7, 1000, 65535, 65536, 65537, 2**31 - 1]:
    got = np.asarray(givens._below(jnp.asarray(words.astype(np.uint32)), n))
    want = (words * np.uint64(n)) >> np.uint64(32)
    np.testing.assert_array_equal(got, want.astype(np.int64))
    assert got.min() >= 0 and got.max() < n


def _reference_rounds(pairs):
  last = {}
  rounds = []
  for i, j in pairs:
    r = max(last.get(i, -1), last.get(j, -1)) + 1
    last[i] = last[j] = r
    rounds.append(r)
  return np.array(rounds)


@pytest.mark.parametrize("cols,num", [(2, 7), (10, 300), (1024, 2480)])
def test_rotation_rounds_follow_the_last_rotation_on_each_column(cols, num):
  pairs, _ = givens.rotation_sequence(jax.random.key(cols), cols, num)
  rounds = np.asarray(jax.jit(givens.rotation_rounds)(pairs))
  pairs = np.asarray(pairs)
  np.testing.assert_array_equal(rounds, _reference_rounds(map(tuple, pairs)))
  for r in range(rounds.max() + 1):  # a round's rotations touch disjoint columns
    touched = pairs[rounds == r].reshape(-1)
    assert len(np.unique(touched)) == len(touched)
  if cols == 1024:  # the method note: about 21 rounds for n=1024, d=0.1
    assert rounds.max() + 1 < 40


@pytest.mark.parametrize(
    "rows,cols,density",
    [(2, 3, 0.7), (1, 40, 1.0), (20, 33, 0.4), (97, 131, 0.1), (64, 64, 1.0), (256, 512, 0.3)],
)
def test_rounds_give_the_matrix_of_the_sequential_loop(rows, cols, density):
  keys = jax.random.split(jax.random.key(2), 3)
  for key in keys:
    one_by_one = givens.givens_orthogonal(key, rows, cols, density, rounds=False)
    in_rounds = givens.givens_orthogonal(key, rows, cols, density, rounds=True)
    assert int(in_rounds.num_rotations) == int(one_by_one.num_rotations)
    assert int(in_rounds.nnz) == int(one_by_one.nnz)
    a, b = np.asarray(one_by_one.matrix), np.asarray(in_rounds.matrix)
    np.testing.assert_array_equal(a, b)  # each entry through the same steps


def test_rounds_vmap_over_targets_and_finish_past_the_first_chunk():
  cols, density = 40, 1.0
  bound = givens.max_rotations(1, cols, density)
  keys = jax.random.split(jax.random.key(1), 32)
  both = [jax.vmap(lambda k, r=r: givens.givens_orthogonal(k, 1, cols, density, rounds=r))(keys)
          for r in (False, True)]
  np.testing.assert_array_equal(both[0].num_rotations, both[1].num_rotations)
  assert np.any(np.asarray(both[1].num_rotations) > bound)
  assert np.all(np.asarray(both[1].nnz) == cols)
  np.testing.assert_array_equal(both[0].matrix, both[1].matrix)


def test_network_kernels_are_the_same_in_rounds():
  from eoi_jax import kernels
  key = jax.random.key(4)
  requests = [kernels.KernelRequest((3, 3, 16, 32), key[None], np.array([0.2])),
              kernels.KernelRequest((4, 48, 24), jax.random.split(key, 4), np.full(4, 0.3),
                                    layer_axes=1)]
  one_by_one = kernels.generate(requests, rounds=False)
  in_rounds = kernels.generate(requests, rounds=True)
  for (k1, m1), (k2, m2) in zip(one_by_one, in_rounds):
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(k1, k2)


def test_rounds_argument_is_checked():
  with pytest.raises(TypeError, match="rounds"):
    givens.givens_orthogonal(jax.random.key(0), 3, 5, 0.5, rounds="yes")


def _bits(x):
  """The float32 bit patterns (so -0.0 and 0.0 differ)."""
  return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("rounds", [False, True])
def test_same_bits_alone_under_jit_and_in_any_batch(rounds):
  # Every path applies each rotation with the same arithmetic (both products
  # rounded, then summed), so a key gives the same bits alone, under jit, in
  # a vmapped batch of any size (the loop's batching rule), nested, and in
  # rounds or one by one.
  rows, cols, density = 24, 40, 0.45
  keys = jax.random.split(jax.random.key(5), 6)
  make = lambda k: givens.givens_orthogonal(k, rows, cols, density, rounds=rounds).matrix
  alone = [_bits(make(k)) for k in keys]
  other_path = givens.givens_orthogonal(keys[0], rows, cols, density, rounds=not rounds).matrix
  np.testing.assert_array_equal(_bits(other_path), alone[0])
  np.testing.assert_array_equal(_bits(jax.jit(make)(keys[0])), alone[0])
  for size in (1, 2, 5):
    batch = jax.vmap(make)(keys[:size])
    for i in range(size):
      np.testing.assert_array_equal(_bits(batch[i]), alone[i])
  nested = jax.jit(jax.vmap(jax.vmap(make)))(keys.reshape(3, 2))
  np.testing.assert_array_equal(_bits(nested).reshape(6, rows, cols), np.stack(alone))
  pairs, angles = givens.rotation_sequence(
      keys[1], cols, int(givens.givens_orthogonal(keys[1], rows, cols, density).num_rotations))
  np.testing.assert_array_equal(_bits(givens.apply_rotations(pairs, angles, rows, cols)), alone[1])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_halves_are_exact_and_their_products_too(dtype):
  # What makes the rotation immune to multiply-add fusion: x == hi + lo, and
  # every product of two halves is exact in the dtype (checked in float64),
  # unless it underflows below the smallest normal number.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal(4096) * 2.0 ** rng.integers(-4, 4, 4096), dtype)
  y = jnp.asarray(rng.standard_normal(4096), dtype)
  (xh, xl), (yh, yl) = givens._halves(x), givens._halves(y)
  np.testing.assert_array_equal(np.asarray(xh + xl), np.asarray(x))
  for a in (xh, xl):
    for b in (yh, yl):
      exact = np.asarray(a, np.float64) * np.asarray(b, np.float64)
      normal = (np.abs(exact) >= float(jnp.finfo(dtype).tiny)) | (exact == 0)
      assert normal.mean() > 0.25  # most products of float16 low halves underflow
      np.testing.assert_array_equal(np.asarray(a * b, np.float64)[normal], exact[normal])
