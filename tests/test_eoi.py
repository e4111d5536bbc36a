"""Tests of the dense and conv EOI generators (public API)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eoi_jax
from eoi_jax import givens

DENSE_SHAPES = [
    (128, 128),  # square
    (300, 100),  # tall
    (100, 300),  # wide
    (1, 50),
    (50, 1),
    (97, 131),  # primes
    (131, 97),
    (1, 1),
    (2, 3),
]


def _gram_error(weight):
  w = np.asarray(weight, np.float64)
  gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
  return np.abs(gram - np.eye(gram.shape[0])).max()


def _check_density(key, shape, density, mask):
  """Realised density is within half of the deciding rotation's jump."""
  rows, cols = min(shape), max(shape)
  nnz = int(np.asarray(mask).sum())
  target = math.ceil(density * rows * cols - 1e-9)
  if rows >= target:  # the identity pattern already meets the target
    assert nnz == rows
    return
  result = givens.givens_orthogonal(key, rows, cols, density)
  n = int(result.num_rotations)
  traj = np.asarray(givens.support_trajectory(key, rows, cols, n + 1))
  assert nnz == traj[n]
  jump = traj[n] - traj[n - 1] if n > 0 and traj[n] >= target else traj[n + 1] - traj[n]
  assert abs(nnz - density * rows * cols) <= jump / 2 + 1e-9


@pytest.mark.parametrize("shape", DENSE_SHAPES)
@pytest.mark.parametrize("density", [0.05, 0.3, 1.0])
def test_dense_orthogonal_sparse_and_mask_is_support(shape, density):
  key = jax.random.key(0)
  weight, mask = eoi_jax.sparse_orthogonal(key, shape, density)
  assert weight.shape == shape and weight.dtype == jnp.float32
  assert mask.shape == shape and mask.dtype == jnp.bool_
  np.testing.assert_array_equal(mask, weight != 0)
  assert _gram_error(weight) <= 2e-5
  _check_density(key, shape, density, mask)


@pytest.mark.parametrize("shape", [(512, 512), (4096, 512), (4096, 4096)])
def test_dense_large_shapes(shape):
  key = jax.random.key(1)
  weight, mask = eoi_jax.sparse_orthogonal(key, shape, 0.1)
  assert _gram_error(weight) <= 2e-5
  np.testing.assert_array_equal(mask, weight != 0)
  _check_density(key, shape, 0.1, mask)


@pytest.mark.parametrize("gain", [0.5, 1.0247, 3.0, -2.0])
def test_gain_scales_the_gram_matrix(gain):
  weight, _ = eoi_jax.sparse_orthogonal(jax.random.key(2), (64, 96), 0.2, gain=gain)
  w = np.asarray(weight, np.float64)
  assert np.abs(w @ w.T - gain**2 * np.eye(64)).max() <= 2e-5 * gain**2


@pytest.mark.parametrize("rounds", [False, True])
def test_gain_scales_the_start_as_it_would_the_result(rounds):
  # The generator starts from gain * [I | 0]: the rotations are linear, so
  # kernels equal gain times the unit-gain kernels within a rounding per
  # rotation, with the same masks, for concrete and traced gains.
  from eoi_jax import kernels
  key = jax.random.key(5)
  requests = [kernels.KernelRequest((96, 64), key[None], np.array([0.2])),
              kernels.KernelRequest((3, 3, 16, 32), jax.random.split(key, 1), np.array([0.3]))]
  unit = kernels.generate(requests, rounds=rounds)
  traced = jax.jit(lambda g: kernels.generate(requests, gain=g, rounds=rounds))
  for gain in (1.0247, -2.0):
    for scaled in (kernels.generate(requests, gain=gain, rounds=rounds), traced(gain)):
      for (w, m), (w1, m1) in zip(scaled, unit):
        np.testing.assert_array_equal(m, m1)
        np.testing.assert_allclose(w, gain * np.asarray(w1), rtol=0, atol=abs(gain) * 1e-6)


def test_float64(x64):
  weight, mask = eoi_jax.sparse_orthogonal(
      jax.random.key(3), (200, 120), 0.2, gain=1.5, dtype=jnp.float64
  )
  assert weight.dtype == jnp.float64
  w = np.asarray(weight)
  assert np.abs(w.T @ w - 2.25 * np.eye(120)).max() <= 1e-12 * 2.25
  np.testing.assert_array_equal(mask, w != 0)


def test_bfloat16_is_cast_at_the_end():
  key = jax.random.key(4)
  w16, m16 = eoi_jax.sparse_orthogonal(key, (64, 64), 0.2, dtype=jnp.bfloat16)
  w32, m32 = eoi_jax.sparse_orthogonal(key, (64, 64), 0.2)
  assert w16.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(w16), np.asarray(w32.astype(jnp.bfloat16)))
  np.testing.assert_array_equal(m16, w16 != 0)
  np.testing.assert_array_equal(m16, m32)
  assert _gram_error(w16) <= 2e-2  # bfloat16 has an 8-bit mantissa


@pytest.mark.parametrize("shape", [(40, 100), (100, 40)])
def test_density_at_or_below_one_over_max_gives_identity_pattern(shape):
  for density in [1e-6, 1.0 / max(shape)]:
    weight, mask = eoi_jax.sparse_orthogonal(jax.random.key(0), shape, density, gain=2.0)
    np.testing.assert_array_equal(weight, 2.0 * np.eye(*shape))
    assert int(mask.sum()) == min(shape)


def test_determinism_and_key_dependence():
  shape = (64, 80)
  a = eoi_jax.sparse_orthogonal(jax.random.key(9), shape, 0.3)
  b = eoi_jax.sparse_orthogonal(jax.random.key(9), shape, 0.3)
  c = eoi_jax.sparse_orthogonal(jax.random.key(10), shape, 0.3)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[1], c[1])
  # Legacy uint32 keys work too.
  legacy = eoi_jax.sparse_orthogonal(jax.random.PRNGKey(9), shape, 0.3)
  assert _gram_error(legacy[0]) <= 2e-5


def test_jit_vmap_and_eval_shape():
  shape, density = (128, 128), 0.125
  keys = jax.random.split(jax.random.key(0), 6)
  stacked_w, stacked_m = jax.jit(
      jax.vmap(lambda k: eoi_jax.sparse_orthogonal(k, shape, density))
  )(keys)
  assert stacked_w.shape == (6,) + shape
  for i in range(6):
    w, m = eoi_jax.sparse_orthogonal(keys[i], shape, density)
    np.testing.assert_array_equal(stacked_w[i], w)
    np.testing.assert_array_equal(stacked_m[i], m)
  out = jax.eval_shape(lambda k: eoi_jax.sparse_orthogonal(k, (4096, 2048), 0.1), keys[0])
  assert out[0].shape == (4096, 2048) and out[0].dtype == jnp.float32
  assert out[1].shape == (4096, 2048) and out[1].dtype == jnp.bool_


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)  # -0.0 and 0.0 differ


def test_same_bits_for_a_key_alone_under_jit_and_in_any_vmap():
  # A stack initialised in one call and a layer initialised alone get the
  # same weights, bit for bit, dense and conv, for every batch size.
  keys = jax.random.split(jax.random.key(3), 5)
  makers = [lambda k: eoi_jax.sparse_orthogonal(k, (48, 80), 0.3, gain=1.5),
            lambda k: eoi_jax.sparse_delta_orthogonal(k, (3, 3, 16, 24), 0.2)]
  for make in makers:
    alone = [make(k) for k in keys]
    for i, (w, m) in enumerate(zip(*jax.jit(jax.vmap(make))(keys))):
      np.testing.assert_array_equal(_bits(w), _bits(alone[i][0]))
      np.testing.assert_array_equal(m, alone[i][1])
    stacked, _ = jax.vmap(make)(keys[:2])
    for i in range(2):
      np.testing.assert_array_equal(_bits(stacked[i]), _bits(alone[i][0]))
    np.testing.assert_array_equal(_bits(jax.jit(make)(keys[4])[0]), _bits(alone[4][0]))
  batch, _ = eoi_jax.eoi_batch(keys, (64, 64), np.full(5, 0.2))
  for i in range(5):
    np.testing.assert_array_equal(_bits(batch[i]), _bits(eoi_jax.sparse_orthogonal(
        keys[i], (64, 64), 0.2)[0]))


def test_eval_shape_compiles_and_runs_nothing():
  compiled = []

  def listener(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    # A shape no other test uses, so nothing is cached.
    out = jax.eval_shape(
        lambda k: eoi_jax.sparse_delta_orthogonal(k, (3, 3, 333, 77), 0.1),
        jax.random.key(0),
    )
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert out[0].shape == (3, 3, 333, 77)
  assert compiled == []


@pytest.mark.parametrize(
    "shape,density",
    [
        ((0, 4), 0.5),
        ((4, -1), 0.5),
        ((4,), 0.5),
        ((2, 3, 4), 0.5),
        ((4, 4), 0.0),
        ((4, 4), 1.0001),
        ((4, 4), float("nan")),
        ((4.0, 4), 0.5),
    ],
)
def test_dense_rejects_bad_input(shape, density):
  with pytest.raises(ValueError, match="shape|density"):
    eoi_jax.sparse_orthogonal(jax.random.key(0), shape, density)


def test_rejects_zero_gain_traced_density_and_int_dtype():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="gain"):
    eoi_jax.sparse_orthogonal(key, (4, 4), 0.5, gain=0.0)
  with pytest.raises(ValueError, match="dtype"):
    eoi_jax.sparse_orthogonal(key, (4, 4), 0.5, dtype=jnp.int32)
  with pytest.raises(ValueError, match="density must be a concrete"):
    jax.jit(lambda k, d: eoi_jax.sparse_orthogonal(k, (4, 4), d))(key, 0.5)


# ----------------------------------------------------------------------------
# Conv kernels.

CONV_CASES = [
    ((3, 3, 16, 32), 0.1, None),
    ((3, 3, 32, 16), 0.1, "sqrt"),
    ((5, 5, 8, 8), 0.05, 0.5),
    ((1, 1, 24, 24), 0.25, None),
    ((3, 64, 48), 0.2, None),  # 1-D
    ((3, 3, 3, 8, 12), 0.1, "sqrt"),  # 3-D
    ((3, 3, 4, 4), 0.9, None),  # centre support exceeds nothing to add
    ((3, 3, 64, 64), 0.01, 0.5),  # centre support exceeds the target
]


@pytest.mark.parametrize("shape,density,center_density", CONV_CASES)
def test_conv_delta_orthogonal_and_mask_rule(shape, density, center_density):
  key = jax.random.key(5)
  kernel, mask = eoi_jax.sparse_delta_orthogonal(
      key, shape, density, gain=1.3, center_density=center_density
  )
  kernel, mask = np.asarray(kernel), np.asarray(mask)
  assert kernel.shape == shape and mask.shape == shape and mask.dtype == bool
  centre = tuple(k // 2 for k in shape[:-2])
  off_centre = kernel.copy()
  off_centre[centre] = 0
  assert np.all(off_centre == 0)
  h = kernel[centre].astype(np.float64)
  gram = h @ h.T if h.shape[0] <= h.shape[1] else h.T @ h
  assert np.abs(gram - 1.69 * np.eye(gram.shape[0])).max() <= 2e-5 * 1.69
  # The mask holds the support and otherwise only zeros.
  assert np.all(mask[kernel != 0])
  center_nnz = int(np.count_nonzero(h))
  want = max(int(math.floor(density * kernel.size + 0.5)), center_nnz)
  assert int(mask.sum()) == want
  # The centre density follows the rule.
  d_center = eoi_jax.center_density_for(density, math.prod(shape[:-2]), center_density)
  ref_w, _ = eoi_jax.sparse_orthogonal(jax.random.split(key)[0], shape[-2:], d_center, gain=1.3)
  np.testing.assert_array_equal(h != 0, np.asarray(ref_w) != 0)


def test_conv_extra_entries_are_uniform():
  # Over many keys every off-centre position is picked about equally often.
  shape, density = (3, 3, 4, 4), 0.3
  keys = jax.random.split(jax.random.key(0), 400)
  masks = jax.vmap(lambda k: eoi_jax.sparse_delta_orthogonal(k, shape, density)[1])(keys)
  freq = np.asarray(masks)[:, [0, 0, 2, 2], [0, 2, 0, 2]].mean(axis=0)
  # 400 Bernoulli draws: standard error below 0.025.
  assert np.all(np.abs(freq - freq.mean()) < 0.1)
  assert 0.05 < freq.mean() < 0.5


def test_center_density_rules():
  assert eoi_jax.center_density_for(0.1, 9) == 0.1
  assert abs(eoi_jax.center_density_for(0.1, 9, "sqrt") - 0.31623) < 1e-4
  assert abs(eoi_jax.center_density_for(0.05, 9, "sqrt") - 0.22361) < 1e-4
  assert eoi_jax.center_density_for(0.05, 1, "sqrt") == 0.05  # d K caps it
  assert eoi_jax.center_density_for(0.1, 9, 0.4) == 0.4
  with pytest.raises(ValueError, match="center_density"):
    eoi_jax.center_density_for(0.1, 9, "more")
  with pytest.raises(ValueError, match="center_density"):
    eoi_jax.center_density_for(0.1, 9, 1.5)


def test_structured_mask_is_the_centre_mask_broadcast():
  kernel, mask = eoi_jax.sparse_delta_orthogonal(
      jax.random.key(1), (3, 3, 16, 24), 0.2, structured=True
  )
  centre_support = np.asarray(kernel)[1, 1] != 0
  np.testing.assert_array_equal(
      mask, np.broadcast_to(centre_support, (3, 3, 16, 24))
  )


@pytest.mark.parametrize(
    "shape", [(2, 2, 4, 4), (3, 4, 4, 4), (4, 4), (3, 3, 3, 3, 3, 3), (3, 3, 0, 4)]
)
def test_conv_rejects_bad_shapes(shape):
  with pytest.raises(ValueError, match="shape"):
    eoi_jax.sparse_delta_orthogonal(jax.random.key(0), shape, 0.1)


def test_conv_vmap_over_keys():
  keys = jax.random.split(jax.random.key(0), 4)
  kernels, masks = jax.vmap(
      lambda k: eoi_jax.sparse_delta_orthogonal(k, (3, 3, 8, 8), 0.2)
  )(keys)
  for i in range(4):
    k, m = eoi_jax.sparse_delta_orthogonal(keys[i], (3, 3, 8, 8), 0.2)
    np.testing.assert_allclose(kernels[i], k, atol=1e-6)
    np.testing.assert_array_equal(masks[i], m)


BAD_KEYS = [
    (jnp.zeros(3, jnp.uint32), ValueError, r"key.*uint32\[3\]"),
    (jnp.zeros(1, jnp.uint32), ValueError, r"key.*uint32\[1\]"),
    (jnp.zeros(2, jnp.int32), TypeError, r"key.*int32\[2\]"),
    (3, TypeError, r"key.*int 3"),
    (None, TypeError, r"key.*None"),
    (jax.random.split(jax.random.key(0), 4), ValueError, r"key.*batch of 4 keys.*jax.vmap"),
    (jax.random.split(jax.random.PRNGKey(0), 4), ValueError, r"key.*batch of 4 keys.*jax.vmap"),
]


@pytest.mark.parametrize("bad,error,match", BAD_KEYS)
def test_every_generator_checks_its_key(bad, error, match):
  from eoi_jax.initializers import eoi, eoi_mask
  calls = [lambda k: eoi_jax.sparse_orthogonal(k, (8, 8), 0.5),
           lambda k: eoi_jax.sparse_delta_orthogonal(k, (3, 3, 4, 4), 0.5),
           lambda k: eoi_jax.givens_orthogonal(k, 4, 8, 0.5),
           lambda k: eoi_jax.rotation_sequence(k, 8, 3),
           lambda k: givens.support_trajectory(k, 4, 8, 3),
           lambda k: eoi(0.5)(k, (8, 8)),
           lambda k: eoi_mask(0.5)(k, (8, 8))]
  for call in calls:
    with pytest.raises(error, match=match):
      call(bad)
  # Under jit a key is a tracer: its shape and dtype are checked alike.
  if not isinstance(bad, (int, type(None))):
    with pytest.raises(error, match=match):
      jax.jit(calls[0])(bad)


def test_keys_of_a_batch_are_checked_and_valid_keys_pass_everywhere():
  with pytest.raises(ValueError, match=r"keys.*5 densities.*got 4 keys"):
    eoi_jax.eoi_batch(jax.random.split(jax.random.key(0), 4), (8, 8), np.full(5, 0.5))
  with pytest.raises(ValueError, match=r"keys.*uint32\[4, 3\]"):
    eoi_jax.eoi_batch(jnp.zeros((4, 3), jnp.uint32), (8, 8), np.full(4, 0.5))
  with pytest.raises(TypeError, match=r"keys.*int 0"):
    eoi_jax.eoi_batch(0, (8, 8), np.full(4, 0.5))
  # Typed and raw uint32[2] keys, alone, under jit, and one per example under vmap.
  for keys in (jax.random.split(jax.random.key(1), 3), jax.random.split(jax.random.PRNGKey(1), 3)):
    make = lambda k: eoi_jax.sparse_orthogonal(k, (8, 8), 0.5)[0]
    np.testing.assert_array_equal(jax.jit(make)(keys[0]), make(keys[0]))
    np.testing.assert_array_equal(jax.vmap(make)(keys)[2], make(keys[2]))
    eoi_jax.eoi_batch(keys, (8, 8), np.full(3, 0.5))


def test_low_precision_masks_are_the_float32_support_as_documented():
  # A small gain makes float16 round some entries to zero; they stay in the mask.
  key, shape = jax.random.key(6), (64, 64)
  w32, m32 = eoi_jax.sparse_orthogonal(key, shape, 0.9, gain=1e-4)
  np.testing.assert_array_equal(m32, w32 != 0)
  for dtype in (jnp.float16, jnp.bfloat16):
    w, m = eoi_jax.sparse_orthogonal(key, shape, 0.9, gain=1e-4, dtype=dtype)
    np.testing.assert_array_equal(np.asarray(w), np.asarray(w32.astype(dtype)))
    np.testing.assert_array_equal(m, m32)
    assert np.all(np.asarray(m)[np.asarray(w) != 0])  # the mask contains the support
    if dtype == jnp.float16:
      assert np.count_nonzero(w) < np.count_nonzero(m)  # some underflowed
    batch, batch_masks = eoi_jax.eoi_batch(key[None], shape, [0.9], gain=1e-4, dtype=dtype)
    np.testing.assert_array_equal(batch_masks[0], m32)
    params = {"fc": {"kernel": jnp.zeros(shape, dtype)}}
    out = eoi_jax.eoi_params(key, params, {"fc/kernel": 0.9}, gain=1e-4)
    assert out.params["fc"]["kernel"].dtype == dtype
    assert np.all(np.asarray(out.masks["fc"]["kernel"])[np.asarray(out.params["fc"]["kernel"]) != 0])
  k16, c16 = eoi_jax.sparse_delta_orthogonal(key, (3, 3, 32, 32), 0.5, gain=1e-4,
                                             dtype=jnp.float16)
  _, c32 = eoi_jax.sparse_delta_orthogonal(key, (3, 3, 32, 32), 0.5, gain=1e-4)
  np.testing.assert_array_equal(c16, c32)
  # The contract is written where users read it.
  for documented in (eoi_jax.sparse_orthogonal, eoi_jax.sparse_delta_orthogonal,
                     eoi_jax.eoi_batch, eoi_jax.eoi_params):
    assert "float32 support" in documented.__doc__ and "bfloat16" in documented.__doc__
