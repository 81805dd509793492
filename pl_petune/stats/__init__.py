"""Statistics over run records: pure functions of plain data (numpy and scipy only; no torch, no Lightning).

:mod:`pl_petune.stats.core` holds the statistics (summaries, significance tests, band averages, upper
bounds, seed regimes); :mod:`pl_petune.stats.tables` lays them out as the tables of "Revisiting
Parameter-Efficient Tuning" (Chen et al., EMNLP 2022) and renders Markdown, CSV and LaTeX.
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
