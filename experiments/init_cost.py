"""Construction cost of EOI, SAO and AI, and EOI's expected-density law.

Paper (Nowak et al. 2024, timing figure and Section 3): EOI is cheap to build,
cheaper than SAO, and, unlike SAO, reaches any density; the density of a
Givens product grows as a Markov chain whose law is known exactly.

This experiment measures, on the machine it runs on:

* ``timing.csv`` / ``timing.png``: seconds to build one ``n x n`` matrix at
  each density with EOI (:func:`eoi_jax.sparse_orthogonal`), SAO
  (:func:`eoi_jax.methods.sao.sao_kernel`, where the density is a valid
  degree) and AI (a uniform random mask, then ``--ai-steps`` steps of
  approximate isometry, :func:`eoi_jax.methods.initialize` with ``uniform+ai``),
  each jitted, compile time apart (the first call's), then the median of 3
  calls;
* ``density_law.csv`` / ``density_law.png``: the exact expected density of an
  ``n x n`` EOI matrix after ``t`` rotations (:func:`eoi_jax.chain.row_chain_distribution`)
  against the mean and spread of the simulated support counts
  (:func:`eoi_jax.givens.support_trajectory`) over ``--keys`` keys.

``--quick``: n = 64, 128, 256 and AI at 100 steps.

The tables, figures and ``PROVENANCE.md`` go to
``runs/experiments/init_cost[-quick]/`` (or ``--results-dir``); ``--record``
copies them to ``experiments/results/init_cost[-quick]/``. ``--check`` checks
the arguments, says at which points SAO is timed, and stops.

Usage: python -m experiments.init_cost [--quick] [--results-dir DIR] [--check] [--record]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import _common

DENSITIES = (0.05, 0.1, 0.25, 0.5)


def _time(fn, repeats: int = 3) -> tuple[float, float]:
  """``(first call s, median of later calls s)``."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  runs = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - start)
  return first, float(np.median(runs))


def _sao_degree(n: int, density: float) -> int | None:
  """SAO's degree for an ``n x n`` matrix at ``density``, or ``None`` where none exists."""
  from eoi_jax.methods import sao

  try:
    return sao.degree_for_density((n, n), density)
  except ValueError:
    return None


# The timing table as printed while it is measured: (header, row key, unit).
TIMING_COLUMNS = (("n", "n", None), ("density", "density", None),
                  ("EOI first call s", "eoi_first_s", "s"), ("EOI later ms", "eoi_s", "ms"),
                  ("SAO first call s", "sao_first_s", "s"), ("SAO later ms", "sao_s", "ms"),
                  ("AI first call s", "ai_first_s", "s"), ("AI later ms", "ai_s", "ms"))


def timing_line(row: dict | None = None) -> str:
  """One Markdown line of the printed timing table: its header (``row=None``)
  and rule, or ``row`` (``-`` where SAO has no degree).

  Example:
    >>> timing_line({"n": 64, "density": 0.1, "eoi_first_s": 1.03, "eoi_s": 0.0017,
    ...              "ai_first_s": 0.28, "ai_s": 0.27})
    '| 64 | 0.1 | 1.030 | 1.70 | - | - | 0.280 | 270.00 |'
  """
  if row is None:
    return ("| " + " | ".join(h for h, _, _ in TIMING_COLUMNS) + " |\n"
            + "|" + "---|" * len(TIMING_COLUMNS))
  cells = []
  for _, key, unit in TIMING_COLUMNS:
    value = row.get(key)
    cells.append("-" if value is None else f"{value:g}" if unit is None else
                 f"{value:.3f}" if unit == "s" else f"{1e3 * value:.2f}")
  return "| " + " | ".join(cells) + " |"


def timing(sizes, densities, ai_steps: int) -> list[dict]:
  """Times EOI, SAO and AI at each size and density (module docstring);
  prints the table a line at a time as it is measured.

  Returns:
    One row per ``(n, density)``: ``{"n", "density", "eoi_first_s", "eoi_s",
    "ai_first_s", "ai_s"}`` and, where SAO's degree exists, ``"sao_first_s",
    "sao_s"`` (seconds).
  """
  import eoi_jax
  from eoi_jax import methods
  from eoi_jax.methods import sao

  rows = []
  key = jax.random.key(0)
  print(f"Time to build one n x n matrix (first call: with compilation; later: the median of "
        f"3 more calls, AI's one more call), AI at {ai_steps} steps:", flush=True)
  print(timing_line(), flush=True)
  for n in sizes:
    for d in densities:
      row = {"n": n, "density": d}
      row["eoi_first_s"], row["eoi_s"] = _time(lambda: eoi_jax.sparse_orthogonal(key, (n, n), d))
      degree = _sao_degree(n, d)
      if degree is not None:
        row["sao_first_s"], row["sao_s"] = _time(lambda: sao.sao_kernel(key, (n, n),
                                                                         degree=degree))
      params = {"layer": {"kernel": jnp.zeros((n, n))}}
      row["ai_first_s"], row["ai_s"] = _time(lambda: methods.initialize(
          "uniform+ai", key, params, d, ai_steps=ai_steps).params, repeats=1)
      rows.append(row)
      print(timing_line(row), flush=True)
  return rows


def density_law(n: int, keys: int) -> list[dict]:
  from eoi_jax import chain, givens

  steps = int(3 * chain.mean_field_rotations(n, 0.9)) + 1
  law = chain.row_chain_distribution(n, steps)
  expected = law @ np.arange(n + 1) / n
  counts = np.stack([np.asarray(givens.support_trajectory(jax.random.key(k), n, n, steps))
                     for k in range(keys)]) / (n * n)
  return [{"rotations": t, "expected_density": float(expected[t]),
           "simulated_mean": float(counts[:, t].mean()), "simulated_std": float(
               counts[:, t].std())} for t in range(0, steps + 1, max(1, steps // 200))]


def _write(path: Path, rows) -> None:
  fields = list(dict.fromkeys(k for r in rows for k in r))
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


# The timed callables by column prefix: the registry method each one is (its
# colour and marker in every figure) and its legend label.
TIMED = {"eoi": ("eoi", "eoi (sparse_orthogonal)"), "sao": ("sao", "sao (sao_kernel)"),
         "ai": ("uniform+ai", "uniform+ai")}


def timing_figure(rows, densities, *, name: str, ai_steps: int | None = None,
                  device: str | None = None):
  """The timing figure: a panel per density, wall time per matrix against ``n``
  for EOI, SAO (where its degree exists) and AI; returns the matplotlib figure."""
  from eoi_jax.training import plotting

  if device is None:
    first = jax.devices()[0]
    device = first.platform + ("" if first.device_kind.lower() == first.platform
                               else f" ({first.device_kind})")
  fig, axes = plotting.figure(len(densities), f"{name}: wall time to build one n x n matrix "
                              f"on {device}\n(jitted; median of 3 calls after the first, "
                              "whose compilation is left out)", panel_size=(3.6, 3.2),
                              sharey=True)
  sizes = sorted({r["n"] for r in rows})
  for ax, d in zip(axes, densities):
    sub = [r for r in rows if r["density"] == d]
    for prefix, (method, _) in TIMED.items():
      style = plotting.method_style(method)
      points = [(r["n"], 1e3 * r[f"{prefix}_s"]) for r in sub
                if r.get(f"{prefix}_s") is not None]
      if points:
        ax.plot(*zip(*points), color=style.colour, marker=style.marker,
                markersize=9 if style.marker == "*" else 6)
    missing = [r["n"] for r in sub if r.get("sao_s") is None]
    note = "" if not missing else "\nno SAO: no degree gives it" + (
        "" if len(missing) == len(sub) else f" at n = {', '.join(map(str, missing))}")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    plotting.log_y(ax)
    ax.set_title(f"requested density {d}{note}", fontsize=9)
    ax.set_xlabel("n (matrix is n x n)")
  axes[0].set_ylabel("wall time per matrix (ms)")
  labels = {"ai": f"uniform+ai ({ai_steps} AI steps)" if ai_steps else "uniform+ai"}
  styles = [plotting.method_style(method) for method, _ in TIMED.values()]
  plotting.legend(fig, [plotting.handle(s.colour, s.marker) for s in styles],
                  [labels.get(p, label) for p, (_, label) in TIMED.items()], title="method")
  return fig


def density_law_figure(law, n_law: int, *, name: str, keys: int | None = None):
  """The density-law figure: EOI's exact expected density after ``t`` rotations
  and the simulated mean ± std; returns the matplotlib figure."""
  from matplotlib.patches import Patch

  from eoi_jax.training import plotting

  eoi = plotting.method_style("eoi").colour
  fig, (ax,) = plotting.figure(1, f"{name}: density of a {n_law} x {n_law} EOI matrix after t "
                               "Givens rotations", panel_size=(5.0, 3.4))
  t = [r["rotations"] for r in law]
  mean = np.array([r["simulated_mean"] for r in law])
  std = np.array([r["simulated_std"] for r in law])
  ax.fill_between(t, mean - std, mean + std, color=eoi, alpha=0.3, linewidth=0)
  ax.plot(t, mean, color=eoi)
  ax.plot(t, [r["expected_density"] for r in law], color="black", linestyle="--")
  ax.set_xlabel("Givens rotations applied (t)")
  ax.set_ylabel("density (fraction of non-zero entries)")
  plotting.integer_ticks(ax.xaxis)
  simulated = f"simulated mean ± std ({keys} keys)" if keys else "simulated mean ± std"
  plotting.legend(fig, [plotting.handle("black", linestyle="--"),
                        (Patch(color=eoi, alpha=0.3, linewidth=0), plotting.handle(eoi))],
                  ["exact expectation (row chain)", simulated], title="method: eoi")
  return fig


def _figures(out: Path, rows, densities, law, n_law, *, ai_steps=None, keys=None,
             device=None) -> None:
  from eoi_jax.training import plotting

  plotting.save(timing_figure(rows, densities, name=out.name, ai_steps=ai_steps, device=device),
                out / "timing.png")
  plotting.save(density_law_figure(law, n_law, name=out.name, keys=keys), out / "density_law.png")


def redraw(out, *, ai_steps: int | None = None, keys: int | None = None) -> None:
  """Draws ``timing.png`` and ``density_law.png`` again from the ``timing.csv``
  and ``density_law.csv`` in ``out`` (nothing is measured again).

  Args:
    out: a results directory of this experiment.
    ai_steps, keys: the run's ``--ai-steps`` and ``--keys``, for the legends.

  Example:
    >>> redraw("experiments/results/init_cost-quick", ai_steps=100, keys=32)
  """
  out = Path(out)

  def read(name):
    with (out / name).open() as f:
      return [{k: None if v == "" else (int(v) if k in ("n", "rotations") else float(v))
               for k, v in row.items()} for row in csv.DictReader(f)]

  rows, law = read("timing.csv"), read("density_law.csv")
  densities = list(dict.fromkeys(r["density"] for r in rows))
  n_law = round(1 / law[0]["expected_density"])  # no rotation yet: the identity, density 1/n
  _figures(out, rows, densities, law, n_law, ai_steps=ai_steps, keys=keys,
           device=_measured_on(out))


def _measured_on(out: Path) -> str:
  """The device ``PROVENANCE.md`` in ``out`` names ("a device" without one)."""
  try:
    text = (out / "PROVENANCE.md").read_text()
  except OSError:
    return "a device"
  for line in text.splitlines():
    if line.startswith("- device: "):
      platform, _, kind = line.removeprefix("- device: ").split(",")[0].partition(" (")
      kind = kind.rstrip(")")
      return platform if kind.lower() in ("", platform) else f"{platform} ({kind})"
  return "a device"


def record_name(args) -> str:
  """``init_cost[-quick]``, then ``-sizes64,128``, ``-densities0.25,0.5``,
  ``-aisteps100``, ``-keys8`` for each option given: a changed run is never
  recorded as the full or the quick one."""
  name = "init_cost" + ("-quick" if args.quick else "")
  for option, label in (("sizes", "sizes"), ("densities", "densities"),
                        ("ai_steps", "aisteps"), ("keys", "keys")):
    value = getattr(args, option)
    if value is not None:
      name += f"-{label}" + (",".join(map(str, value)) if isinstance(value, list) else str(value))
  return name


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m experiments.init_cost",
                                   description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="sizes 64, 128, 256 and AI with 100 steps (the full run: sizes 64 "
                      "to 2048, AI with 1000 steps)")
  parser.add_argument("--sizes", type=int, nargs="+", help="matrix sizes n (n x n) to time")
  parser.add_argument("--densities", type=float, nargs="+",
                      help=f"densities to time (default {' '.join(map(str, DENSITIES))})")
  parser.add_argument("--ai-steps", type=int,
                      help="optimisation steps of approximate isometry (default 1000; 100 "
                      "with --quick)")
  parser.add_argument("--keys", type=int,
                      help="keys averaged for the simulated density law (default 32)")
  parser.add_argument("--results-dir", help="where the tables and figures go (default "
                      "runs/experiments/NAME: init_cost[-quick], then each option given)")
  parser.add_argument("--check", action="store_true",
                      help="check the arguments, say where SAO is timed, and stop")
  _common.add_record_argument(parser)
  args = parser.parse_args(argv)
  name = record_name(args)
  args.densities = list(DENSITIES) if args.densities is None else args.densities
  args.keys = 32 if args.keys is None else args.keys
  sizes = args.sizes or ([64, 128, 256] if args.quick else [64, 128, 256, 512, 1024, 2048])
  ai_steps = args.ai_steps if args.ai_steps is not None else (100 if args.quick else 1000)
  if min(sizes) < 2 or ai_steps < 1 or args.keys < 1 or not all(
      0 < d <= 1 for d in args.densities):
    print("init_cost: error: sizes must be >= 2, densities in (0, 1], --ai-steps and --keys "
          ">= 1", file=sys.stderr)
    return 2
  if args.check:
    points = [(n, d) for n in sizes for d in args.densities]
    with_sao = [p for p in points if _sao_degree(*p) is not None]
    print(f"{name}: {len(points)} points (size x density), EOI and AI at each, SAO at "
          f"{len(with_sao)} (where its degree exists)")
    return 0
  out = Path(args.results_dir or Path("runs") / "experiments" / name)
  out.mkdir(parents=True, exist_ok=True)
  rows = timing(sizes, args.densities, ai_steps)
  _write(out / "timing.csv", rows)
  n_law = min(128, max(sizes))
  law = density_law(n_law, args.keys)
  _write(out / "density_law.csv", law)
  gap = max(abs(r["expected_density"] - r["simulated_mean"]) for r in law)
  print(f"Density law of a {n_law} x {n_law} EOI matrix: the exact expected density and the mean "
        f"over {args.keys} keys differ by at most {gap:.4f} over {len(law)} rotation counts")
  try:
    _figures(out, rows, args.densities, law, n_law, ai_steps=ai_steps,
             keys=args.keys)
  except ImportError:
    print("init_cost: matplotlib is not installed; tables only", file=sys.stderr)
  _common.provenance(out, ["experiments.init_cost"] + list(sys.argv[1:] if argv is None
                                                          else argv))
  print(f"results: {out}")
  if args.record:
    print(f"record: {_common.record(out, name)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
