"""Statistics over run records: pure functions of plain data (numpy and scipy only; no torch, no Lightning).

One module per job: :mod:`~pl_petune.stats.inputs` reduces records to observations, :mod:`~pl_petune.stats.core`
holds summaries, band averages, upper bounds and seed regimes, :mod:`~pl_petune.stats.significance` the tests,
:mod:`~pl_petune.stats.labels` the labels and order every table and figure uses,
:mod:`~pl_petune.stats.analysis` computes a report's numbers once, :mod:`~pl_petune.stats.tables` lays them out
as the tables of "Revisiting Parameter-Efficient Tuning" (Chen et al., EMNLP 2022), and
:mod:`~pl_petune.stats.render` writes Markdown, CSV and LaTeX.
"""

from pl_petune.stats.core import (
    Column,
    Comparison,
    Obs,
    band_average,
    classify_seeds,
    compare,
    decide,
    holm,
    observations,
    relative_upper_bound,
    seed_series,
    summarize,
)

__all__ = ["Column", "Comparison", "Obs", "band_average", "classify_seeds", "compare", "decide", "holm",
           "observations", "relative_upper_bound", "seed_series", "summarize"]
