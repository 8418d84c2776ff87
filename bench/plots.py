"""The benchmark plots of the docs site, made from saved benchmark output.

``bench/results/*.txt`` each hold the output of one benchmark script (the tables ``_common.py``
prints), with the command that made it on the first line (``$ python bench/...``) and the date and
machine on the second. This script parses the tables and writes SVGs with matplotlib:

- ``ratios.svg``: every comparison of kvmap with another tool (fsspec's kerchunk reference file
  system, zarr's ``ObjectStore``, VirtualiZarr's ``ManifestStore``, ``dict``, ``bisect``,
  ``json.dump``) as the ratio of the medians, kvmap / the other (below 1: kvmap takes less);
- ``store.svg``: reading through zarr, microseconds per chunk, kvmap's ``KVMapStore`` and each peer;
- ``load-memory.svg``: loading references (ms) and the memory a loaded map keeps (bytes per entry).

The SVGs are deterministic (no date, fixed ids), so running this again on the same results gives
the same files. Needs matplotlib (``pip install -e ".[docs]"``). Run from the repository root::

    python bench/plots.py                   # bench/results/*.txt -> docs/assets/bench-*.svg
    python bench/plots.py --out /tmp/plots  # somewhere else
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ASSETS = ROOT / "docs" / "assets"

#: Words in a row's case that say its baseline is another tool (and not kvmap in another setting).
PEERS = ("ReferenceFileSystem", "fs.cat", "ObjectStore", "ManifestStore", "fsspec", "dict", "bisect", "json.dump")

KVMAP_COLOUR = "#3f51b5"  # the site's indigo
PEER_COLOUR = "#b0b0b0"


@dataclass(frozen=True)
class Row:
    """One row of a table: the medians of both sides and their ratio (kvmap / baseline)."""

    case: str
    kvmap: float
    baseline: float
    ratio: float
    target: str
    meets: str


@dataclass
class Table:
    """One ``== title ==`` table of a benchmark's output."""

    title: str
    params: str
    unit: str
    rows: list[Row] = field(default_factory=list)


@dataclass
class Result:
    """One results file: the command that made it, when and where, and its tables."""

    name: str
    command: str
    machine: str
    tables: list[Table]


def _median(cell: str) -> float:
    """The median of a cell such as ``1,207 (1,201-1,348)`` or ``81.95``."""
    return float(cell.split(" (")[0].replace(",", ""))


def parse(text: str, name: str = "") -> Result:
    """The command, machine line and tables of one benchmark's saved output."""
    lines = text.splitlines()
    if len(lines) < 2 or not lines[0].startswith("$ ") or not lines[1].startswith("# "):
        raise ValueError(f"{name}: the first two lines must be '$ COMMAND' and '# DATE AND MACHINE'")
    result = Result(name, lines[0][2:], lines[1][2:], [])
    table: Table | None = None
    for i, line in enumerate(lines):
        title = re.fullmatch(r"== (.*) ==", line)
        if title:
            params = lines[i + 1]
            unit = re.search(r"values in (\S+):", params)
            if unit is None:
                raise ValueError(f"{name}: line {i + 2}: no 'values in UNIT:'")
            table = Table(title.group(1), params, unit.group(1))
            result.tables.append(table)
            continue
        cells = [c.strip() for c in line.split(" | ")]
        if table is None or len(cells) != 6 or cells[0] == "case":
            continue
        case, kvmap, baseline, ratio, target, meets = cells
        if "-" * 3 in case:
            continue
        table.rows.append(Row(case, _median(kvmap), _median(baseline), float(ratio.rstrip("x")), target, meets))
    if not result.tables or not all(t.rows for t in result.tables):
        raise ValueError(f"{name}: no table rows found")
    return result


def load(results: Path = RESULTS) -> dict[str, Result]:
    """Every results file of a bench script in ``results``, by script name (``bench_store``...)."""
    files = sorted(results.glob("bench_*.txt"))  # the tables of bench/bench_*.py (scale_1e8.txt is prose)
    if not files:
        raise SystemExit(f"no benchmark output in {results}")
    return {f.stem: parse(f.read_text(encoding="utf-8"), f.name) for f in files}


def peer_rows(table: Table) -> list[tuple[str, Row]]:
    """The rows of ``table`` that compare kvmap with another tool, each with a self-contained label."""
    out = []
    previous = ""
    for row in table.rows:
        if row.case.startswith("same,"):
            label = f"{previous}, {row.case.removeprefix('same, ')}"
        else:
            label = previous = row.case
        if any(peer in row.case for peer in PEERS) or (row.case.startswith("same,") and out):
            out.append((label, row))
    return out


# -- plots ----------------------------------------------------------------------------------------


def _setup() -> object:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "svg.hashsalt": "kvmap-bench",  # the same element ids every run
            "svg.fonttype": "none",  # text as text: the reader's own fonts, a smaller file
            "font.size": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
        }
    )
    return plt


def _save(fig: object, path: Path) -> None:
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})  # type: ignore[attr-defined]


def plot_ratios(results: dict[str, Result], path: Path) -> None:
    plt = _setup()
    labels: list[str] = []
    ratios: list[float] = []
    for name, result in results.items():
        for table in result.tables:
            for label, row in peer_rows(table):
                labels.append(f"{name.removeprefix('bench_')}: {label}")
                ratios.append(row.ratio)
    fig, ax = plt.subplots(figsize=(8, 0.24 * len(labels) + 1.2))  # type: ignore[attr-defined]
    y = range(len(labels))[::-1]
    colours = [KVMAP_COLOUR if r <= 1 else "#e57373" for r in ratios]
    ax.barh(list(y), ratios, color=colours, height=0.7)
    ax.axvline(1.0, color="black", linewidth=0.8)
    for yi, r in zip(y, ratios, strict=True):
        ax.text(r + 0.03, yi, f"{r:.2f}x", va="center", fontsize=7)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.set_xlabel("kvmap / the other tool (median time or memory; below 1: kvmap takes less)")
    ax.set_xlim(0, max(1.2, max(ratios) * 1.12))
    ax.set_title("kvmap against its peers, every comparison of the saved runs")
    _save(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]


def plot_store(results: dict[str, Result], path: Path) -> None:
    plt = _setup()
    tables = results["bench_store"].tables
    fig, axes = plt.subplots(len(tables), 1, figsize=(8, 3.1 * len(tables)))  # type: ignore[attr-defined]
    for ax, table in zip(axes, tables, strict=True):
        # The rows share kvmap's side per measurement; one bar for kvmap, one per peer.
        groups: dict[str, dict[str, float]] = {}
        for row in table.rows:
            if "no-op" in row.case or "redirect vs windows" in row.case:
                continue
            measurement, _, peer = row.case.partition(": vs ")
            bars = groups.setdefault(measurement, {"kvmap": row.kvmap})
            bars[peer] = row.baseline
        names = list(groups)
        series = ["kvmap", *sorted({p for bars in groups.values() for p in bars if p != "kvmap"})]
        width = 0.8 / len(series)
        shades = [KVMAP_COLOUR, "#9e9e9e", "#bdbdbd", "#dcdcdc", "#ececec"]
        for i, peer in enumerate(series):
            xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(names))]
            heights = [groups[n].get(peer, 0.0) for n in names]
            ax.bar(
                xs, heights, width=width, label=peer, color=shades[i % len(shades)], edgecolor="#666666", linewidth=0.3
            )
        ax.set_xticks(range(len(names)), [n.replace(", ", ",\n", 1) for n in names], fontsize=7)
        ax.set_ylabel(f"median {table.unit} (less is better)")
        ax.set_title(table.title, fontsize=9)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]


def _grouped(ax: object, rows: list[tuple[str, Row]], unit: str, title: str) -> None:
    """Horizontal bars, kvmap's measurement first and then each tool it was compared with."""
    groups: dict[str, list[tuple[str, float]]] = {}
    for label, row in rows:
        measurement, _, peer = label.partition(" vs ")
        groups.setdefault(measurement, [(f"kvmap: {measurement}", row.kvmap)]).append((peer, row.baseline))
    bars = [bar for group in groups.values() for bar in [*group, ("", 0.0)]][:-1]  # a gap between groups
    ys = [-i for i in range(len(bars))]
    values = [v for _, v in bars]
    colours = [KVMAP_COLOUR if label.startswith("kvmap: ") else PEER_COLOUR for label, _ in bars]
    ax.barh(ys, values, height=0.8, color=colours)  # type: ignore[attr-defined]
    for y, (label, value) in zip(ys, bars, strict=True):
        if label:
            ax.text(value, y, f" {label}: {value:,.4g}", va="center", fontsize=6.5)  # type: ignore[attr-defined]
    ax.set_xlim(0, max(values) * 2.2)  # type: ignore[attr-defined]
    ax.set_yticks([])  # type: ignore[attr-defined]
    ax.set_xlabel(f"median {unit} (less is better)")  # type: ignore[attr-defined]
    ax.set_title(title, fontsize=9)  # type: ignore[attr-defined]


def plot_load_memory(results: dict[str, Result], path: Path) -> None:
    plt = _setup()
    loading = [
        (label, row)
        for name in ("bench_load", "bench_kerchunk")
        for table in results[name].tables
        for label, row in peer_rows(table)
        if "gc disabled" not in label and "export" not in label
    ]
    memory = [(label, row) for table in results["bench_memory"].tables for label, row in peer_rows(table)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 2.4))  # type: ignore[attr-defined]
    _grouped(left, loading, results["bench_load"].tables[0].unit, "loading references")
    _grouped(right, memory, results["bench_memory"].tables[0].unit, "memory a loaded map keeps")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]


PLOTS = {"bench-ratios.svg": plot_ratios, "bench-store.svg": plot_store, "bench-load-memory.svg": plot_load_memory}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of *.txt outputs")
    parser.add_argument("--out", type=Path, default=ASSETS, help="directory for the SVGs (default docs/assets)")
    args = parser.parse_args(argv)
    results = load(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, plot in PLOTS.items():
        plot(results, args.out / name)
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
