"""SNIP, GraSP and SynFlow against slow references on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from eoi_jax import layers, topk
from eoi_jax.masking import mask_densities
from eoi_jax.methods import pruning
from eoi_jax.training import models

KERNELS = ("fc1/kernel", "fc2/kernel")


def _tiny(dtype=jnp.float32):
  k = jax.random.split(jax.random.key(0), 4)
  return {
      "fc1": {"kernel": jax.random.normal(k[0], (6, 5), dtype), "bias": 0.1 * jax.random.normal(k[1], (5,), dtype)},
      "fc2": {"kernel": jax.random.normal(k[2], (5, 3), dtype), "bias": 0.1 * jax.random.normal(k[3], (3,), dtype)},
  }


def _apply(p, x):
  h = jnp.tanh(x @ p["fc1"]["kernel"] + p["fc1"]["bias"])
  return h @ p["fc2"]["kernel"] + p["fc2"]["bias"]


def _batch(dtype=jnp.float32):
  x = jax.random.normal(jax.random.key(1), (16, 6), dtype)
  y = jax.random.randint(jax.random.key(2), (16,), 0, 3)
  return x, y


def _ce(logits, y):
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _flat(masks):
  return np.concatenate([np.asarray(masks[n.split("/")[0]]["kernel"]).reshape(-1) for n in KERNELS])


def _top(scores, k, largest=True):
  order = np.argsort(-scores if largest else scores, kind="stable")
  keep = np.zeros(scores.size, bool)
  keep[order[:k]] = True
  return keep


def test_snip_matches_finite_difference_sensitivities(x64):
  params, (x, y) = _tiny(jnp.float64), _batch(jnp.float64)
  masks = pruning.snip(params, _apply, (x, y), 0.4)
  # |dL/dm| at m = 1 by central differences on every connection's gate.
  sens = []
  for name in KERNELS:
    layer = name.split("/")[0]
    w = np.asarray(params[layer]["kernel"])
    for idx in np.ndindex(w.shape):
      def loss_with_gate(scale):
        gated = np.ones_like(w)
        gated[idx] = scale
        p = {**params, layer: {**params[layer], "kernel": jnp.asarray(w * gated)}}
        return float(_ce(_apply(p, x), y))
      sens.append(abs(loss_with_gate(1 + 1e-6) - loss_with_gate(1 - 1e-6)) / 2e-6)
  want = _top(np.array(sens), round(0.4 * 45))
  np.testing.assert_array_equal(_flat(masks), want)


def test_grasp_matches_the_explicit_hessian(x64):
  params, (x, y) = _tiny(jnp.float64), _batch(jnp.float64)
  masks = pruning.grasp(params, _apply, (x, y), 0.3, temperature=200.0)
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  loss = lambda v: _ce(_apply(unravel(v), x) / 200.0, y)
  g = jax.grad(loss)(flat)
  hessian = jax.hessian(loss)(flat)
  scores = unravel(-flat * (hessian @ g))
  ref = np.concatenate([np.asarray(scores[n.split("/")[0]]["kernel"]).reshape(-1) for n in KERNELS])
  np.testing.assert_array_equal(_flat(masks), _top(ref, round(0.3 * 45), largest=False))


def test_synflow_matches_an_eager_loop(x64):
  params = _tiny(jnp.float64)
  density, rounds = 0.2, 7
  masks = pruning.synflow(params, _apply, (6,), density, iterations=rounds, float64=True)
  keep = np.ones(45, bool)
  abs_params = jax.tree.map(jnp.abs, params)
  for t in range(rounds):
    def masked(p, keep=keep):
      k1, k2 = keep[:30].reshape(6, 5), keep[30:].reshape(5, 3)
      return {"fc1": {"kernel": p["fc1"]["kernel"] * k1, "bias": p["fc1"]["bias"]},
              "fc2": {"kernel": p["fc2"]["kernel"] * k2, "bias": p["fc2"]["bias"]}}
    p = masked(abs_params)
    grads = jax.grad(lambda q: jnp.sum(_apply(q, jnp.ones((1, 6), jnp.float64))))(p)
    scores = np.concatenate([np.abs(np.asarray(grads[l]["kernel"] * p[l]["kernel"])).reshape(-1)
                             for l in ("fc1", "fc2")])
    scores = np.where(keep, scores, -1.0)
    keep = _top(scores, int(np.floor(density ** ((t + 1) / rounds) * 45 + 0.5)))
  np.testing.assert_array_equal(_flat(masks), keep)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
@pytest.mark.parametrize("density", [0.05, 0.5])
def test_exact_global_density(method, density):
  params, batch = _tiny(), _batch()
  if method == "synflow":
    masks = pruning.synflow(params, _apply, (6,), density, iterations=10)
  else:
    masks = getattr(pruning, method)(params, _apply, batch, density)
  assert _flat(masks).sum() == int(np.floor(density * 45 + 0.5))
  assert masks["fc1"]["bias"] is None  # biases are never masked


def test_methods_run_on_a_cnn_and_feed_eoi():
  model = models.build("deep_cnn", (8, 8, 3), 10, depth=5, width=8)
  spec = model.sparsity_spec()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  apply_fn = lambda p, x: nnx.merge(graphdef, p, rest)(x)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 3))
  y = jnp.arange(8) % 10
  total = sum(l.size for l in layers.layout(params, stacked=spec.stacked).layers)
  for masks in (pruning.snip(params, apply_fn, (x, y), 0.1, stacked=spec.stacked),
                pruning.grasp(params, apply_fn, (x, y), 0.1, stacked=spec.stacked),
                pruning.synflow(params, apply_fn, (8, 8, 3), 0.1, iterations=5,
                                stacked=spec.stacked)):
    kept = sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks) if np.ndim(m))
    assert kept == int(np.floor(0.1 * total + 0.5))
    dens = mask_densities(params, masks, stacked=spec.stacked)
    assert set(dens) == {l.name for l in layers.layout(params, stacked=spec.stacked).layers}


def test_bad_arguments():
  params, batch = _tiny(), _batch()
  with pytest.raises(ValueError, match="density"):
    pruning.snip(params, _apply, batch, 0.0)
  with pytest.raises(ValueError, match="temperature"):
    pruning.grasp(params, _apply, batch, 0.1, temperature=0)
  with pytest.raises(ValueError, match="iterations"):
    pruning.synflow(params, _apply, (6,), 0.1, iterations=0)
  with pytest.raises(ValueError, match="jax_enable_x64"):
    pruning.synflow(params, _apply, (6,), 0.1, float64=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_top_count_selection_equals_a_stable_sort(dtype, x64):
  """Ties (rounded values, -0.0 vs 0.0), NaN and infinities, both directions."""
  keep_top = jax.jit(topk.keep_top, static_argnames="largest")
  rng = np.random.default_rng(0)
  for trial in range(30):
    n = (1, 7, 150)[trial % 3]
    x = rng.normal(size=n)
    if trial % 2:
      x = np.round(x, 1)
    for value, copies in ((np.nan, 2), (-0.0, 2), (0.0, 2), (np.inf, 1), (-np.inf, 1)):
      if n > 1:
        x[rng.integers(0, n, copies)] = value
    scores = jnp.asarray(x, dtype)
    values = np.asarray(scores)
    for count in sorted({0, 1, n // 3, n - 1, n}):
      for largest in (True, False):
        order = np.argsort(-values if largest else values, kind="stable")
        expected = np.zeros(n, bool)
        expected[order[:count]] = True
        np.testing.assert_array_equal(np.asarray(keep_top(scores, count, largest=largest)),
                                      expected)


def _regression(outputs):
  k = jax.random.split(jax.random.key(5), 2)
  params = {"fc1": {"kernel": jax.random.normal(k[0], (6, 8))},
            "fc2": {"kernel": jax.random.normal(k[1], (8, outputs))}}
  apply_fn = lambda p, x: jnp.tanh(x @ p["fc1"]["kernel"]) @ p["fc2"]["kernel"]
  return params, apply_fn


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_targets_the_default_loss_cannot_score_ask_for_loss_fn(method):
  prune = getattr(pruning, method)
  x = jax.random.normal(jax.random.key(1), (16, 6))
  params, apply_fn = _regression(1)
  # One output: softmax cross-entropy is identically zero, every score 0.
  for targets in (jax.random.normal(jax.random.key(2), (16, 1)), jnp.zeros(16, jnp.int32)):
    with pytest.raises(ValueError, match="one output.*loss_fn"):
      prune(params, apply_fn, (x, targets), 0.3)
  params, apply_fn = _regression(3)
  bad_targets = {
      "regression values": (jax.random.normal(jax.random.key(3), (16, 3)), "distributions"),
      "labels out of range": (jnp.arange(16) % 4, r"labels in \[0, 3\)"),
      "negative labels": (-(jnp.arange(16) % 3), r"labels in \[0, 3\)"),
  }
  for targets, match in bad_targets.values():
    with pytest.raises(ValueError, match=f"{match}.*loss_fn"):
      prune(params, apply_fn, (x, targets), 0.3)
  # A loss_fn scores them; one-hot and soft targets work with the default.
  mse = lambda out, batch: jnp.mean((out - batch[1]) ** 2)
  masks = prune(params, apply_fn, (x, bad_targets["regression values"][0]), 0.3, loss_fn=mse)
  assert _flat_any(masks) == round(0.3 * (48 + 24))
  soft = jax.nn.softmax(jax.random.normal(jax.random.key(4), (16, 3)))
  prune(params, apply_fn, (x, soft), 0.3)
  prune(params, apply_fn, (x, jax.nn.one_hot(jnp.arange(16) % 3, 3)), 0.3)


def _flat_any(masks):
  return sum(int(np.asarray(m).sum()) for m in jax.tree.leaves(masks) if np.ndim(m))


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_all_zero_or_non_finite_scores_are_an_error_never_a_mask(method):
  from eoi_jax import methods
  prune = getattr(pruning, method)
  params, batch = _tiny(), _batch()
  constant = lambda out, b: 0.0 * jnp.sum(out) + 1.0
  with pytest.raises(ValueError, match="every score is zero.*loss_fn"):
    prune(params, _apply, batch, 0.3, loss_fn=constant)
  with pytest.raises(ValueError, match="not finite"):
    prune(params, _apply, batch, 0.3, loss_fn=lambda out, b: jnp.sum(jnp.sqrt(out - 100.0)))
  with pytest.raises(ValueError, match="every score is zero"):
    methods.initialize(method, jax.random.key(0), params, 0.3, apply_fn=_apply, batch=batch,
                       loss_fn=constant)
