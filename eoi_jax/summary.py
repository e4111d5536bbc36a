"""Sparsity summaries: per-layer shape, requested and realised density, nnz."""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from eoi_jax import layers
from eoi_jax.layers import Filter, Layout, Stacked


class LayerRow(NamedTuple):
  name: str
  shape: tuple[int, ...]  # full leaf shape, stack axes included
  requested: float | None  # mean requested density (None if not given)
  realised: float
  nnz: int
  size: int


class SparsitySummary(NamedTuple):
  """Per-layer and total sparsity of a masked params tree.

  ``rows`` covers the maskable layers; totals are over those layers.
  """

  rows: tuple[LayerRow, ...]
  total_nnz: int
  total_size: int
  requested_density: float | None

  @property
  def density(self) -> float:
    return self.total_nnz / self.total_size if self.total_size else 1.0

  def to_dict(self) -> dict:
    """JSON-ready dict: ``{"layers": [...], "total": {...}}``."""
    return {
        "layers": [
            {"name": r.name, "shape": list(r.shape), "requested": r.requested,
             "realised": r.realised, "nnz": r.nnz, "size": r.size}
            for r in self.rows
        ],
        "total": {"requested": self.requested_density, "realised": self.density,
                  "nnz": self.total_nnz, "size": self.total_size},
    }

  def table(self) -> str:
    """Plain-text table, one line per layer and a total line."""
    def fmt(x):
      return "-" if x is None else f"{x:.4f}"

    header = ("layer", "shape", "requested", "realised", "nnz", "size")
    lines = [
        (r.name, "x".join(map(str, r.shape)), fmt(r.requested), fmt(r.realised),
         str(r.nnz), str(r.size))
        for r in self.rows
    ]
    lines.append(("total", "", fmt(self.requested_density), fmt(self.density),
                  str(self.total_nnz), str(self.total_size)))
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def sparsity_summary(params, masks, requested: Mapping[str, object] | None = None,
                     filter: Filter | None = None, stacked: Stacked = None, *,
                     layout: Layout | None = None) -> SparsitySummary:
  """Summarises a mask tree over the maskable layers of ``params``.

  Args:
    params: params tree.
    masks: mask tree (same structure).
    requested: optional ``{name: density}`` that was asked for.
    filter, stacked, layout: as in :func:`eoi_jax.layers.resolve`.

  Returns:
    A :class:`SparsitySummary` (``.table()`` for text, ``.to_dict()`` for JSON).
  """
  layout = layers.resolve(params, filter, stacked, layout)
  mask_by_name = layout.leaves(masks)
  rows = []
  for layer in layout.layers:
    mask = np.broadcast_to(np.asarray(mask_by_name[layer.name]), layer.stack + layer.shape)
    nnz = int(np.count_nonzero(mask))
    want = None
    if requested is not None and layer.name in requested:
      want = float(np.mean(np.asarray(requested[layer.name], np.float64)))
    rows.append(LayerRow(layer.name, layer.stack + layer.shape, want, nnz / layer.size,
                         nnz, layer.size))
  total_size = sum(r.size for r in rows)
  total_nnz = sum(r.nnz for r in rows)
  requested_total = None
  if requested is not None and all(r.requested is not None for r in rows) and total_size:
    requested_total = sum(r.requested * r.size for r in rows) / total_size
  return SparsitySummary(tuple(rows), total_nnz, total_size, requested_total)
