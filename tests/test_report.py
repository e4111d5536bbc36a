"""Reports: realised densities in results.csv and table.md, and figures a reader
can read alone (titles, one legend, a colour per method, integer epochs)."""

import csv
import json
from pathlib import Path

import pytest

from eoi_jax.methods.registry import METHODS
from eoi_jax.training import report

# (method, requested density, realised density, test accuracy): a column's
# densest-looking winners. SAO with dense end layers realises far more than
# its column (0.63 at 0.05), SNIP 12% more (0.056 at 0.05); uniform+eoi 9%.
CELLS = {
    "tanh": [("sao", 0.05, 0.63, 0.95), ("snip", 0.05, 0.056, 0.93),
             ("uniform+eoi", 0.05, 0.0545, 0.91), ("uniform", 0.05, 0.05, 0.11),
             ("sao", 0.1, 0.66, 0.96), ("snip", 0.1, 0.1, 0.92),
             ("uniform+eoi", 0.1, 0.1, 0.93), ("uniform", 0.1, 0.1, 0.12),
             ("dense", 1.0, 1.0, 0.97)],
    "relu": [("sao", 0.05, 0.63, 0.90), ("uniform+eoi", 0.05, 0.05, 0.80),
             ("uniform", 0.05, 0.05, 0.85), ("uniform", 0.1, 0.1, 0.86),
             ("uniform+eoi", 0.1, 0.1, 0.88), ("dense", 1.0, 1.0, 0.95)],
}
EPOCHS = 3


def _write_runs(root: Path, cells=CELLS, seeds=(0, 1)) -> Path:
  """Finished runs as a sweep leaves them: two seeds per cell, 0.002 apart."""
  for activation, entries in cells.items():
    for method, density, realised, accuracy in entries:
      for seed in seeds:
        run = root / "runs" / f"activation={activation},init={method},density={density},seed={seed}"
        run.mkdir(parents=True)
        config = {"dataset": "mnist", "model": "mlp", "depth": 7, "width": 100,
                  "activation": activation, "init": method, "density": density, "seed": seed,
                  "epochs": EPOCHS, "run_dir": str(run), "quiet": True}
        (run / "config.json").write_text(json.dumps(config))
        (run / "summary.json").write_text(json.dumps(
            {"test_accuracy": accuracy + 0.002 * seed, "best_val_accuracy": accuracy,
             "density": realised, "epochs_done": EPOCHS, "wall_time_s": 1.0,
             "train_loss": 0.1}))
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({"epoch": e, "train_loss": (2.3 - 2 * accuracy) / (e + 1) + 0.01 * seed,
                        "jacobian_sv_mean": realised, "jacobian_sv_var": realised / 10})
            + "\n" for e in range(EPOCHS)))
        (run / "sparsity.json").write_text(json.dumps({"total": {"size": 129_400}}))
  return root


def _row(table: str, *cells: str) -> str:
  """The table line that starts with ``cells``."""
  start = "| " + " | ".join(cells) + " |"
  (line,) = [l for l in table.splitlines() if l.startswith(start)]
  return line


def test_results_csv_keeps_requested_and_realised_density(tmp_path):
  results = report.write(_write_runs(tmp_path), figures=False)
  rows = list(csv.DictReader(results.open()))
  assert len(rows) == 2 * (len(CELLS["tanh"]) + len(CELLS["relu"]))
  assert "init_density" not in rows[0]
  sao = [r for r in rows if r["init"] == "sao" and r["density"] == "0.05"]
  assert {r["realised_density"] for r in sao} == {"0.63"}
  assert {(r["density"], r["realised_density"]) for r in rows if r["init"] == "uniform"} == {
      ("0.05", "0.05"), ("0.1", "0.1")}


def test_table_never_bolds_an_entry_denser_than_its_column(tmp_path):
  table = report.table(report.collect(_write_runs(tmp_path)), name="grid")
  assert "more than 10%" in table and "never bold" in table and "within each activation" in table
  header = _row(table, "activation", "method")
  assert "requested density 0.05 | requested density 0.1 | requested density 1.0" in header
  # SAO (0.63 at 0.05) and SNIP (12% over) have the best accuracies, yet
  # uniform+eoi (9% over, within the margin) is the column's bold entry.
  sao = _row(table, "tanh", "sao")
  assert "0.9510 ± 0.0014 (2); realised 0.6300 †" in sao and "**" not in sao
  snip = _row(table, "tanh", "snip")
  assert "0.9310 ± 0.0014 (2); realised 0.0560 †" in snip
  assert "**" not in snip
  eoi = _row(table, "tanh", "uniform+eoi")
  assert "**0.9110 ± 0.0014 (2)**; realised 0.0545 |" in eoi
  assert "**0.9310 ± 0.0014 (2)**; realised 0.1000 |" in eoi
  assert "**" not in _row(table, "tanh", "dense")  # dense is never a sparse winner
  # Each activation is its own section: plain uniform wins its relu column.
  assert "**0.8510 ± 0.0014 (2)**; realised 0.0500" in _row(table, "relu", "uniform")
  assert "**" not in _row(table, "relu", "sao")


def test_method_options_name_series_and_other_fields_make_sections():
  def run(init, **config):
    return {"name": init, "config": {"init": init, "density": 0.125, "seed": 0, "lr": 0.1,
                                     "sao_degree": None, "structured": False, **config},
            "summary": {"test_accuracy": 0.5, "density": 0.125}, "history": []}

  runs = [run("uniform+eoi"), run("uniform+eoi", structured=True), run("sao", sao_degree=16),
          run("uniform", lr=0.01)]
  groups = report.grouping(runs)
  assert groups == report.Grouping(panels=("lr",), options=("sao_degree", "structured"))
  labels = [report.series_label(report.cell_of(r, groups).series) for r in runs]
  assert labels == ["uniform+eoi", "uniform+eoi (structured=True)", "sao (sao_degree=16)",
                    "uniform"]
  table = report.table(runs)
  assert "| lr | method |" in table and "| 0.01 | uniform |" in table


def test_method_colours_are_one_per_method_from_the_registry():
  pytest.importorskip("matplotlib")
  from eoi_jax.training import plotting

  styles = plotting.method_styles()
  assert list(styles) == list(METHODS)
  assert len({s.colour for s in styles.values()}) == len(METHODS)
  # A family shares its hue, its value maker sets the marker.
  assert styles["uniform+eoi"].marker == styles["eoi"].marker == "*"
  assert styles["uniform"].marker == "o" and styles["uniform+ai"].marker == "^"
  with pytest.raises(ValueError, match="method must be one of"):
    plotting.method_style("magic")
  styles_of = plotting.linestyles([0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
  assert len({json.dumps(s) for s in styles_of.values()}) == 11


def _drawn_colours(fig) -> dict:
  """``{method: {colours}}`` of every labelled line and errorbar on the axes,
  and of every entry of the figure's legend."""
  import matplotlib.colors as mcolors

  from eoi_jax.training import plotting

  seen: dict = {}

  def note(label, artist):
    method = label.split(",")[0].split(" (")[0]
    if method in METHODS:
      seen.setdefault(method, set()).add(mcolors.to_hex(artist.get_color()))

  for ax in fig.axes:
    handles, labels = ax.get_legend_handles_labels()
    for h, label in zip(handles, labels):
      note(label, h.lines[0] if hasattr(h, "lines") else h)
  for legend in plotting.legends(fig):
    for h, text in zip(legend.legend_handles, legend.get_texts()):
      note(text.get_text(), h)
  return seen


def test_figures_titles_one_outside_legend_colours_and_integer_epochs(tmp_path):
  pytest.importorskip("matplotlib")
  from eoi_jax.training import plotting

  runs = report.collect(_write_runs(tmp_path))
  figures = report.figures(runs, "mlp_grid")
  assert set(figures) == {"accuracy_vs_density.png", "loss_curves.png",
                          "jacobian_vs_density.png"}
  for name, fig in figures.items():
    title = fig.get_suptitle()
    for part in ("mlp_grid", "mnist", "mlp", "depth 7", "width 100", f"{EPOCHS} epochs"):
      assert part in title, (name, part)
    (legend,) = plotting.legends(fig)
    fig.canvas.draw()
    right_of_axes = max(ax.get_window_extent().x1 for ax in fig.axes)
    assert legend.get_window_extent().x0 >= right_of_axes, name
    assert legend.get_window_extent().y1 <= fig._suptitle.get_window_extent().y0, name
    for method, colours in _drawn_colours(fig).items():
      assert colours == {plotting.method_style(method).colour}, (name, method)
  assert set(_drawn_colours(figures["loss_curves.png"])) == {"sao", "snip", "uniform+eoi",
                                                             "uniform", "dense"}
  # The accuracy figure's x is the cell's mean realised density.
  (ax,) = [a for a in figures["accuracy_vs_density.png"].axes
           if a.get_title() == "activation=tanh"]
  handles, labels = ax.get_legend_handles_labels()
  sao = handles[labels.index("sao")].lines[0]
  assert list(sao.get_xdata()) == pytest.approx([0.63, 0.66])
  assert "realised" in ax.get_xlabel()
  # Loss curves: integer epochs, one style per requested density, SAO's realised density named.
  loss = figures["loss_curves.png"]
  for ax in loss.axes:
    assert ax.get_xlabel() == "epoch"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
  texts = [t.get_text() for t in plotting.legends(loss)[0].get_texts()]
  assert "sao (realised 0.63 at 0.05, 0.66 at 0.1)" in texts
  assert {"requested density 0.05", "requested density 0.1", "requested density 1.0"} <= set(texts)
  styles = {json.dumps(line.get_linestyle()) for line in loss.axes[0].lines
            if line.get_label().startswith("uniform,")}
  assert len(styles) == 2
  for fig in figures.values():
    plotting.save(fig, tmp_path / "unused.png")


def test_report_rebuilds_tables_and_figures_into_another_directory(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  runs = _write_runs(tmp_path / "sweep")
  out = tmp_path / "results"
  assert report.main([str(runs), "--out", str(out), "--name", "mlp_grid"]) == 0
  assert "results:" in capsys.readouterr().out
  for name in ("results.csv", "table.md", "accuracy_vs_density.png", "loss_curves.png",
               "jacobian_vs_density.png"):
    assert (out / name).stat().st_size > 0, name
  assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "(mlp_grid: mnist" in (out / "table.md").read_text()
  assert report.main([str(tmp_path / "missing")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_init_cost_figures_share_the_method_colours_and_frame(tmp_path, monkeypatch):
  pytest.importorskip("matplotlib")
  from eoi_jax.training import plotting
  from experiments import init_cost

  rows = [{"n": n, "density": d, "eoi_s": 1e-3 * n / 64, "ai_s": 0.3,
           **({"sao_s": 5e-3} if d == 0.5 else {})} for n in (64, 128) for d in (0.05, 0.5)]
  timing = init_cost.timing_figure(rows, [0.05, 0.5], name="init_cost-quick", ai_steps=100,
                                   device="cpu")
  assert timing.get_suptitle().startswith("init_cost-quick: wall time")
  assert timing.axes[0].get_ylabel() == "wall time per matrix (ms)"
  assert "no SAO" in timing.axes[0].get_title() and "no SAO" not in timing.axes[1].get_title()
  (legend,) = plotting.legends(timing)
  colours = {text.get_text().split(" ")[0]: handle.get_color()
             for handle, text in zip(legend.legend_handles, legend.get_texts())}
  assert colours == {m: plotting.method_style(m).colour for m in ("eoi", "sao", "uniform+ai")}
  assert [line.get_color() for line in timing.axes[1].lines] == [
      plotting.method_style(m).colour for m in ("eoi", "sao", "uniform+ai")]
  eoi_ms = timing.axes[0].lines[0].get_ydata()
  assert list(eoi_ms) == pytest.approx([1.0, 2.0])  # seconds shown as milliseconds
  law = [{"rotations": t, "expected_density": 0.1 + t / 100, "simulated_mean": 0.1 + t / 100,
          "simulated_std": 0.01} for t in range(0, 60, 6)]
  density_law = init_cost.density_law_figure(law, 16, name="init_cost-quick", keys=4)
  assert "16 x 16 EOI matrix" in density_law.get_suptitle()
  assert density_law.axes[0].lines[0].get_color() == plotting.method_style("eoi").colour
  density_law.canvas.draw()
  assert all(float(t).is_integer() for t in density_law.axes[0].get_xticks())
  assert len(plotting.legends(density_law)) == 1
  # Redrawn from the CSVs alone.
  init_cost._write(tmp_path / "timing.csv", rows)
  init_cost._write(tmp_path / "density_law.csv", [dict(r, expected_density=1 / 16 + r["rotations"])
                                                  for r in law])
  (tmp_path / "PROVENANCE.md").write_text("- device: gpu (NVIDIA H200), 1 device(s)\n")
  drawn = {}
  for figure in ("density_law_figure", "timing_figure"):
    monkeypatch.setattr(init_cost, figure, lambda *a, _draw=getattr(init_cost, figure),
                        _key=figure, **kw: drawn.setdefault(_key, _draw(*a, **kw)))
  init_cost.redraw(tmp_path, ai_steps=100, keys=4)
  # n from the density at t = 0, the device where the times were measured
  assert "16 x 16 EOI matrix" in drawn["density_law_figure"].get_suptitle()
  assert "on gpu (NVIDIA H200)" in drawn["timing_figure"].get_suptitle()
  assert (tmp_path / "timing.png").read_bytes()[:4] == b"\x89PNG"
  assert (tmp_path / "density_law.png").read_bytes()[:4] == b"\x89PNG"
