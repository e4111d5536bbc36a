"""Tables and figures from runs on disk: ``eoi-jax report RUN_OR_SWEEP_DIR``.

:func:`collect` reads every run under a directory (a run directory, or a
sweep's ``runs/``): its ``config.json``, ``summary.json`` and
``metrics.jsonl``. :func:`write` then writes, next to them:

* ``results.csv``: one row per run: the config fields, the final test
  accuracy, the best validation accuracy, the realised density at
  initialisation (``init_density``; ``density`` is the requested one), the Jacobian singular-value statistics at initialisation
  when recorded (``jacobian=true``), the wall time, and whether it diverged;
* ``table.md``: mean and standard deviation of the final test accuracy over
  seeds per cell (rows: the varying fields other than seed and density;
  columns: densities), the best sparse entry of each column in bold;
* with matplotlib (the ``plots`` extra) PNG figures: test accuracy against
  density per row, training-loss curves per cell, and the Jacobian's
  singular-value mean and variance at initialisation against density.

Everything is recomputed from the files, so a report can be regenerated at
any time, also while a sweep runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from pathlib import Path

# results.csv column: summary.json key
METRICS = {"test_accuracy": "test_accuracy", "best_val_accuracy": "best_val_accuracy",
           "init_density": "density", "train_loss": "train_loss",
           "wall_time_s": "wall_time_s", "epochs_done": "epochs_done"}
JACOBIAN = ("jacobian_sv_mean", "jacobian_sv_var", "jacobian_sv_max", "jacobian_sv_min")


def _read_json(path: Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _history(run: Path) -> list[dict]:
  records = []
  try:
    lines = (run / "metrics.jsonl").read_text().splitlines()
  except OSError:
    return records
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def collect(directory) -> list[dict]:
  """Every finished run under ``directory`` as ``{"name", "config", "summary",
  "history"}`` (sorted by name)."""
  directory = Path(directory)
  if not directory.exists():
    raise ValueError(f"report: {directory} does not exist")
  candidates = [directory] if (directory / "config.json").exists() else sorted(
      p.parent for p in directory.glob("**/summary.json"))
  runs = []
  for path in candidates:
    config, summary = _read_json(path / "config.json"), _read_json(path / "summary.json")
    if config is None or summary is None:
      continue
    name = str(path.relative_to(directory)) if path != directory else path.name
    runs.append({"name": name.removeprefix("runs/"), "config": config, "summary": summary,
                 "history": _history(path)})
  return runs


def varying_fields(runs) -> list[str]:
  """Config fields whose values differ between runs (``run_dir`` aside)."""
  if not runs:
    return []
  keys = [k for k in runs[0]["config"] if k not in ("run_dir", "quiet", "log_every")]
  return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in runs}) > 1]


def rows(runs) -> list[dict]:
  """The ``results.csv`` rows."""
  out = []
  for r in runs:
    row = {"run": r["name"]}
    row.update({k: v for k, v in r["config"].items() if k != "run_dir"})
    for column, key in METRICS.items():
      row[column] = r["summary"].get(key)
    first = r["history"][0] if r["history"] else {}
    for k in JACOBIAN:
      if k in first:
        row[f"{k}_init"] = first[k]
    row["diverged"] = "diverged_at_epoch" in r["summary"]
    out.append(row)
  return out


def _mean_std(values):
  values = [v for v in values if v is not None and math.isfinite(v)]
  if not values:
    return None, None, 0
  mean = sum(values) / len(values)
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 \
      else 0.0
  return mean, std, len(values)


def _cells(runs, metric="test_accuracy"):
  """``(row labels, densities, {(row, density): (mean, std, n)})``."""
  fields = [f for f in varying_fields(runs) if f not in ("seed", "density")]
  groups: dict = {}
  for r in runs:
    label = ", ".join(f"{f}={r['config'].get(f)}" for f in fields) or "all runs"
    density = r["config"].get("density")
    groups.setdefault((label, density), []).append(r["summary"].get(metric))
  labels = list(dict.fromkeys(k[0] for k in groups))
  densities = sorted({k[1] for k in groups}, key=lambda d: (d is None, d))
  return labels, densities, {k: _mean_std(v) for k, v in groups.items()}


def _is_sparse(label: str, density) -> bool:
  return density is not None and density < 1 and "init=dense" not in label


def table(runs, metric="test_accuracy") -> str:
  """The Markdown table of ``metric`` (mean ± std over seeds, n)."""
  labels, densities, cells = _cells(runs, metric)
  best = {}
  for d in densities:
    candidates = [(cells[(l, d)][0], l) for l in labels
                  if (l, d) in cells and cells[(l, d)][0] is not None and _is_sparse(l, d)]
    if candidates:
      best[d] = max(candidates)[1]
  seeds = sorted({r["config"].get("seed") for r in runs})
  datasets = ", ".join(sorted({str(r["config"].get("dataset")) for r in runs}))
  lines = [f"Final {metric.replace('_', ' ')} on {datasets}: mean ± standard deviation over "
           f"seeds {seeds} (n runs); **bold**: the best sparse entry of each column.", "",
           "| | " + " | ".join(f"density {d}" for d in densities) + " |",
           "|---|" + "---|" * len(densities)]
  for label in labels:
    entries = []
    for d in densities:
      mean, std, n = cells.get((label, d), (None, None, 0))
      text = "" if mean is None else f"{mean:.4f} ± {std:.4f} ({n})"
      entries.append(f"**{text}**" if best.get(d) == label and text else text)
    lines.append(f"| {label} | " + " | ".join(entries) + " |")
  return "\n".join(lines) + "\n"


def _write_csv(path: Path, table_rows) -> None:
  fields = list(dict.fromkeys(k for row in table_rows for k in row))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields)
  writer.writeheader()
  writer.writerows(table_rows)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(out.getvalue())
  tmp.replace(path)


def _save(fig, ax, xlabel: str, ylabel: str, path: Path) -> Path:
  """Labels ``ax``, adds its legend, writes ``fig`` to ``path`` and closes it."""
  import matplotlib.pyplot as plt

  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def draw_figures(runs, directory: Path) -> list[Path]:
  """PNG figures (needs matplotlib); returns the paths written."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  written = []
  labels, densities, cells = _cells(runs)
  if len(densities) > 1:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in labels:
      points = [(d, *cells[(label, d)][:2]) for d in densities
                if (label, d) in cells and cells[(label, d)][0] is not None]
      if points:
        ax.errorbar([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                    marker="o", capsize=3, label=label)
    ax.set_xscale("log")
    written.append(_save(fig, ax, "density", "final test accuracy",
                         directory / "accuracy_vs_density.png"))

  fields = [f for f in varying_fields(runs) if f != "seed"]
  curves: dict = {}
  for r in runs:
    label = ", ".join(f"{f}={r['config'].get(f)}" for f in fields) or "all runs"
    for record in r["history"]:
      curves.setdefault(label, {}).setdefault(record["epoch"], []).append(record["train_loss"])
  if curves:
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, by_epoch in curves.items():
      epochs = sorted(by_epoch)
      ax.plot([e + 1 for e in epochs], [sum(by_epoch[e]) / len(by_epoch[e]) for e in epochs],
              label=label)
    ax.set_yscale("log")
    written.append(_save(fig, ax, "epoch", "training loss (mean over seeds)",
                         directory / "loss_curves.png"))

  jacobian = [r for r in runs if r["history"] and "jacobian_sv_mean" in r["history"][0]]
  if jacobian and len(densities) > 1:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, name in ((axes[0], "jacobian_sv_mean", "mean"),
                          (axes[1], "jacobian_sv_var", "variance")):
      by_label: dict = {}
      for r in jacobian:
        label = ", ".join(f"{f}={r['config'].get(f)}" for f in fields if f != "density")
        by_label.setdefault(label or "all runs", {}).setdefault(
            r["config"]["density"], []).append(r["history"][0][key])
      for label, by_density in by_label.items():
        ds = sorted(by_density)
        ax.plot(ds, [sum(by_density[d]) / len(by_density[d]) for d in ds], marker="o",
                label=label)
      ax.set_xscale("log")
      ax.set_xlabel("density")
      ax.set_ylabel(f"Jacobian singular value {name} at init")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    written.append(directory / "jacobian_vs_density.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
  return written


def write(directory, *, figures: bool = True, out=None) -> Path:
  """Writes ``results.csv`` and ``table.md`` (and the figures) for the runs
  under ``directory`` into ``out`` (default ``directory``); returns the path
  of ``results.csv``.

  Raises:
    ValueError: ``directory`` does not exist or holds no finished run.
  """
  directory = Path(directory)
  runs = collect(directory)
  if not runs:
    raise ValueError(f"report: no finished runs (config.json and summary.json) under "
                     f"{directory}")
  out = directory if out is None else Path(out)
  out.mkdir(parents=True, exist_ok=True)
  results = out / "results.csv"
  _write_csv(results, rows(runs))
  (out / "table.md").write_text(table(runs))
  if figures:
    try:
      draw_figures(runs, out)
    except ImportError:
      warnings.warn("report: matplotlib is not installed, so no figures were drawn "
                    "(pip install 'eoi-jax[plots]')", RuntimeWarning, stacklevel=2)
  return results
