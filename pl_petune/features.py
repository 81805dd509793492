"""``petune features plot``: EH-FT's Figure 4 view of the features entering the classification head.

Each run folder given holds ``features.npz`` (written by :class:`pl_petune.callbacks.features.SaveHeadFeatures`
after the test pass, with the best weights) and ``record.json``. One panel per run: train and dev head inputs
reduced to 2-D together (t-SNE, or PCA), coloured by label, dev drawn as crosses. Next to the picture goes a
number: the silhouette score of the labels in the head's input space (not the 2-D map, which t-SNE bends), per
split; higher means the classes are better separated where the head reads them. The scores are printed as a
Markdown table and written beside the figure as ``<out stem>.json``.

Example:
    petune features plot --runs runs/rte/finetune/KEY1 runs/rte/finetune/KEY2 --labels FT LP-FT \\
        --out report/head_features.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pl_petune.cli import UsageError

REDUCERS = ("tsne", "pca")
SPLITS = ("train", "dev")


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """The saved head inputs of one run folder, with its record (``record.json``) when present.

    Raises:
        UsageError: the folder or its ``features.npz`` is missing.
    """
    folder = Path(run_dir)
    path = folder / "features.npz"
    if not path.is_file():
        raise UsageError(f"no features.npz in {str(folder)!r}; add the SaveHeadFeatures callback to the recipe "
                         "(trainer.callbacks) and rerun petune fit")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    rec_path = folder / "record.json"
    record = json.loads(rec_path.read_text()) if rec_path.is_file() else {}
    return {"dir": str(folder), "arrays": arrays, "record": record}


def silhouette(features: np.ndarray, labels: np.ndarray, seed: int = 0, max_points: int = 2000) -> float:
    """Silhouette score of ``labels`` over ``features`` (euclidean); NaN with fewer than two labels present.

    Above ``max_points`` rows a seeded sample is scored (the score is quadratic in the rows).
    """
    from sklearn.metrics import silhouette_score

    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2 or len(labels) < 3:
        return float("nan")
    sample = max_points if len(labels) > max_points else None
    return float(silhouette_score(features, labels, sample_size=sample, random_state=seed))


def reduce_2d(features: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """``features`` (n × d) mapped to 2-D by t-SNE (PCA-initialised, seeded) or by PCA."""
    if method not in REDUCERS:
        raise UsageError(f"unknown reduction {method!r}; choose from: {', '.join(REDUCERS)}")
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(features)
    from sklearn.manifold import TSNE

    perplexity = min(perplexity, max(2.0, (len(features) - 1) / 3))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(features)


def _label_names(record: dict[str, Any], n: int) -> list[str]:
    try:
        from pl_petune.tasks import get_task

        names = list(get_task(record["task"]).labels)
        if len(names) >= n:
            return names
    except Exception:  # a record from elsewhere: fall back to ids
        pass
    return [str(i) for i in range(n)]


def plot(runs: Sequence[dict[str, Any]], titles: Sequence[str], out: str | Path, method: str = "tsne",
         seed: int = 0) -> list[dict[str, Any]]:
    """Draw one panel per run and return the per-panel scores (silhouette per split, in the head's input space).

    Args:
        runs: from :func:`load_run`.
        titles: one panel title per run.
        out: the PNG path.
        method: ``tsne`` or ``pca``.
        seed: seed of the reduction and of the silhouette sample.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(runs), 4)
    rows = math.ceil(len(runs) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.6 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    scores: list[dict[str, Any]] = []
    for ax, run, title in zip(axes.flat, runs, titles):
        a = run["arrays"]
        splits = [s for s in SPLITS if f"{s}_features" in a and len(a[f"{s}_features"]) == len(a[f"{s}_labels"])]
        if not splits:
            raise UsageError(f"{run['dir']}: features.npz has no train/dev features with one label per row")
        feats = np.concatenate([a[f"{s}_features"] for s in splits])
        labels = np.concatenate([a[f"{s}_labels"] for s in splits]).astype(int)
        where = np.concatenate([[s] * len(a[f"{s}_labels"]) for s in splits])
        xy = reduce_2d(feats, method, seed)
        names = _label_names(run["record"], int(labels.max()) + 1)
        row: dict[str, Any] = {"panel": title, "run_dir": run["dir"]}
        for s in splits:
            row[f"silhouette_{s}"] = silhouette(a[f"{s}_features"], a[f"{s}_labels"], seed)
        for lab in np.unique(labels):
            for s, marker, alpha in (("train", "o", 0.35), ("dev", "x", 0.9)):
                m = (labels == lab) & (where == s)
                if m.any():
                    ax.scatter(xy[m, 0], xy[m, 1], s=9 if s == "train" else 16, marker=marker, alpha=alpha,
                               color=palette(int(lab) % 10), label=f"{names[lab]} ({s})", linewidths=0.8)
        sil = ", ".join(f"{s} {row[f'silhouette_{s}']:.3f}" for s in splits)
        ax.set_title(f"{title}\nsilhouette: {sil}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        scores.append(row)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="best", markerscale=1.5)
    fig.suptitle(f"Head inputs ({method.upper() if method == 'pca' else 't-SNE'}; o train, x dev)", fontsize=10)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return scores


def to_markdown(scores: Sequence[dict[str, Any]]) -> str:
    """The per-panel silhouette scores as a Markdown table."""
    splits = [s for s in SPLITS if any(f"silhouette_{s}" in r for r in scores)]
    lines = ["| panel | " + " | ".join(f"silhouette ({s})" for s in splits) + " |",
             "|:---|" + "---:|" * len(splits)]
    for r in scores:
        lines.append(f"| {r['panel']} | " + " | ".join(f"{r.get(f'silhouette_{s}', float('nan')):.3f}"
                                                         for s in splits) + " |")
    return "\n".join(lines) + "\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="petune features", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action")
    pl = sub.add_parser("plot", help="one t-SNE/PCA panel per run, with silhouette scores")
    pl.add_argument("--runs", nargs="+", required=True, help="run folders holding features.npz")
    pl.add_argument("--labels", nargs="+", default=None, help="panel titles, one per run (default: record name "
                    "or method)")
    pl.add_argument("--out", default="head_features.png", help="the PNG to write; scores go to <stem>.json")
    pl.add_argument("--reduce", default="tsne", help="tsne (default) or pca")
    pl.add_argument("--seed", type=int, default=0, help="seed of t-SNE/PCA and of the silhouette sample")
    return p


def main(argv: list[str]) -> int:
    """Run ``petune features plot``; user errors raise :class:`UsageError` (one line, exit 2)."""
    args = _parser().parse_args(argv)
    if args.action != "plot":
        raise UsageError("missing action; known: plot (petune features plot --runs DIR ... --out fig.png)")
    if args.reduce not in REDUCERS:
        raise UsageError(f"unknown --reduce {args.reduce!r}; choose from: {', '.join(REDUCERS)}")
    if args.labels is not None and len(args.labels) != len(args.runs):
        raise UsageError(f"--labels gives {len(args.labels)} titles for {len(args.runs)} runs; give one per run")
    runs = [load_run(d) for d in args.runs]
    titles = args.labels or [r["record"].get("name") or r["record"].get("method") or Path(r["dir"]).name
                             for r in runs]
    scores = plot(runs, titles, args.out, args.reduce, args.seed)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(scores, indent=2) + "\n")
    print(to_markdown(scores))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0
