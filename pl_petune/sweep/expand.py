"""Grid and random expansion of a sweep's parameters, with W&B's order and distributions.

Grid: the cartesian product of every axis, parameters in sorted name order, the last varying fastest, repeated
points once (``3.0`` is ``3``), cut at ``run_cap`` (W&B's ``grid_search_next_runs``). The product is walked
lazily by index, so a huge integer range with a ``run_cap`` costs only the runs it yields; without one, a grid
over :data:`MAX_RUNS` points is refused before anything is built. Random: independent draws from a generator
seeded by ``--seed`` (W&B's draws are unseeded, wandb/wandb#5582), with the distributions of W&B's engine.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any, Iterator, Mapping, Optional, Sequence

from pl_petune.sweep.spec import GRID_DISTRIBUTIONS, OFFLINE_METHODS, Param, SweepError, parse_parameters

# A study beyond this is not one offline sweep file (Table 2 of Revisiting PETuning is 900 runs).
MAX_RUNS = 100_000


def grid_axis(p: Param) -> Sequence[Any]:
    """The values a grid takes for ``p``: W&B's ``int_uniform`` is ``min..max``, ``q_uniform`` is
    ``numpy.arange(min, max, q)`` (``max`` excluded). Integer ranges stay lazy (a ``range``).

    Raises:
        SweepError: a distribution a grid cannot enumerate, or a q_uniform axis that is empty or too long.
    """
    spec = p.spec
    if p.kind == "constant":
        return [spec["value"]]
    if p.kind == "categorical":
        if "probabilities" in spec:
            raise SweepError(f"parameter {p.name!r}: probabilities are not allowed in a grid sweep")
        return list(spec["values"])
    if p.kind == "int_uniform":
        return range(spec["min"], spec["max"] + 1)
    if p.kind == "q_uniform":
        n = math.ceil((spec["max"] - spec["min"]) / spec["q"])
        if n < 1:
            raise SweepError(f"parameter {p.name!r}: q_uniform from {spec['min']} to {spec['max']} (excluded) in steps "
                             f"of {spec['q']} has no grid values; raise max")
        if n > MAX_RUNS:
            raise SweepError(f"parameter {p.name!r}: q_uniform gives {n} grid values, over the limit of {MAX_RUNS}; "
                             "raise q or narrow min..max")
        import numpy as np

        return np.arange(spec["min"], spec["max"], spec["q"]).tolist()
    raise SweepError(f"parameter {p.name!r} has distribution {p.kind!r}, which a grid cannot enumerate; "
                     f"grid allows: {', '.join(GRID_DISTRIBUTIONS)}")


def sample(p: Param, rng: random.Random) -> Any:
    """One draw of ``p`` for a random sweep (the ``q_`` forms round to a multiple of ``q``; an int ``q``
    gives an int, as W&B's engine does)."""
    spec, kind = p.spec, p.kind
    if kind == "constant":
        return spec["value"]
    if kind == "categorical":
        if "probabilities" in spec:
            return rng.choices(spec["values"], weights=spec["probabilities"])[0]
        return rng.choice(spec["values"])
    if kind == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if kind in ("uniform", "q_uniform"):
        x = rng.uniform(spec["min"], spec["max"])
    elif kind in ("log_uniform", "q_log_uniform"):
        x = math.exp(rng.uniform(spec["min"], spec["max"]))
    elif kind in ("log_uniform_values", "q_log_uniform_values"):
        x = math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    elif kind == "inv_log_uniform":
        x = math.exp(-rng.uniform(spec["min"], spec["max"]))
    elif kind == "inv_log_uniform_values":
        x = math.exp(-rng.uniform(-math.log(spec["max"]), -math.log(spec["min"])))
    elif kind in ("normal", "q_normal"):
        x = rng.gauss(spec["mu"], spec["sigma"])
    elif kind in ("log_normal", "q_log_normal"):
        x = rng.lognormvariate(spec["mu"], spec["sigma"])
    else:  # beta, q_beta
        x = rng.betavariate(spec["a"], spec["b"])
    if kind.startswith("q_"):
        q = spec["q"]
        x = round(x / q) * q
        return int(x) if isinstance(q, int) else x
    return x


def _nest(flat: Sequence[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """A run config ``{top-level name: value}`` from leaf paths: nested parameters become dict values."""
    out: dict[str, Any] = {}
    for path, value in flat:
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def _hashable(value: Any) -> str:
    """W&B's identity of a grid value: integral floats equal their int (``3.0`` is ``3``)."""
    def norm(v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, Mapping):
            return {str(k): norm(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [norm(x) for x in v]
        return v
    return json.dumps(norm(value), sort_keys=True, default=str)


def _product(axes: Sequence[Sequence[Any]]) -> Iterator[tuple]:
    """``itertools.product`` order (last axis fastest) by index, so no axis is ever copied into a tuple."""
    sizes = [len(axis) for axis in axes]
    total = math.prod(sizes)
    for i in range(total):
        point, rest = [], i
        for axis, n in zip(reversed(axes), reversed(sizes)):
            rest, j = divmod(rest, n)
            point.append(axis[j])
        yield tuple(reversed(point))


def grid_size(params: Sequence[Param]) -> int:
    """The number of points of a grid's product, repeats included (computed, not enumerated)."""
    return math.prod(len(grid_axis(p)) for p in params)


def expand(sweep: Mapping[str, Any], count: Optional[int] = None, seed: int = 0) -> list[dict[str, Any]]:
    """The run configs of a sweep, in run order (``{name: value}``; nested parameters give dict values).

    Args:
        sweep: a validated sweep configuration (:func:`pl_petune.sweep.spec.validate_sweep`).
        count: random sweeps: how many runs to draw (default: the file's ``run_cap``).
        seed: random sweeps: the generator's seed, so that a rerun draws the same runs.

    Returns:
        One dict per run. Grid: every distinct point of the product, the last parameter (in sorted order)
        varying fastest, cut at ``run_cap``. Random: ``count`` independent draws.

    Raises:
        SweepError: a grid over a continuous distribution, a sweep over :data:`MAX_RUNS` runs, a random sweep
            without a run count, or a method that needs W&B's controller.
    """
    params = parse_parameters(sweep["parameters"])
    method = sweep["method"]
    cap = sweep.get("run_cap")
    if method == "grid":
        axes = [grid_axis(p) for p in params]
        total = math.prod(len(a) for a in axes)
        if cap is None and total > MAX_RUNS:
            sizes = ", ".join(f"{p.name}: {len(a)}" for p, a in zip(params, axes) if len(a) > 1)
            raise SweepError(f"the grid has {total} points ({sizes}), over the limit of {MAX_RUNS} runs; narrow "
                             "the ranges or set run_cap")
        runs: list[dict[str, Any]] = []
        seen: set = set()
        for point in _product(axes):
            ident = tuple(_hashable(v) for v in point)
            if ident in seen:
                continue
            seen.add(ident)
            runs.append(_nest([(p.path, v) for p, v in zip(params, point)]))
            if cap is not None and len(runs) >= min(cap, MAX_RUNS):
                break
        return runs
    if method == "random":
        n = count if count is not None else cap
        if n is None:
            raise SweepError("a random sweep never ends on its own; give --count N or run_cap in the file")
        if n < 1 or n > MAX_RUNS:
            raise SweepError(f"a random sweep of {n} runs: give between 1 and {MAX_RUNS} (--count or run_cap)")
        rng = random.Random(seed)
        return [_nest([(p.path, sample(p, rng)) for p in params]) for _ in range(n)]
    raise SweepError(f"method {method!r} needs W&B's controller (it learns from finished runs); offline "
                     f"methods: {', '.join(OFFLINE_METHODS)}")


def covering(configs: Sequence[Mapping[str, Any]]) -> list[int]:
    """Indices of a few runs that together give every parameter every one of its values.

    Greedy set cover (each pick adds the most values not yet seen; ties go to the earliest run), returned in
    run order. A quick check parses these instead of all runs: every value meets the parser at least once.
    """
    sets = [{(k, _hashable(v)) for k, v in c.items()} for c in configs]
    todo = set().union(*sets) if sets else set()
    picked: list[int] = []
    while todo:
        best = max(range(len(sets)), key=lambda i: (len(sets[i] & todo), -i))
        picked.append(best)
        todo -= sets[best]
    return sorted(picked)


__all__ = ["MAX_RUNS", "grid_axis", "sample", "grid_size", "expand", "covering"]
