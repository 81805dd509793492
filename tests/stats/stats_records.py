"""Synthetic run records for the statistics tests (no training, no torch).

A module of its own name (not conftest): test folders share the name ``conftest`` in sys.modules."""

from __future__ import annotations

import numpy as np

from pl_petune.records import SCHEMA_VERSION, run_key

PRIMARY = {"cb": "f1_macro", "mrpc": "f1", "stsb": "pearson"}
TRAIN = {"cb": 250, "copa": 400, "wsc": 554, "rte": 2490, "mrpc": 3668, "sst2": 67349, "qnli": 104743}
PARAMS = {"finetune": 125_000_000, "lora": 300_000, "adapter": 900_000, "bitfit": 100_000}


def make_record(task: str, method: str, score: float, init_seed: int, data_seed: int | None = None, *,
                protocol: str = "train_split", seed_mode: str | None = None, higher_is_better: bool = True,
                metric: str | None = None, steps: int = 100, train_size: int | None = None,
                hparams: dict | None = None, **extra) -> dict:
    """A complete schema-1 record with ``test/<metric> = score``."""
    data_seed = init_seed if data_seed is None else data_seed
    metric = metric or PRIMARY.get(task, "accuracy")
    hp = hparams or {}
    params = extra.pop("trainable_params", PARAMS.get(method, 1_000_000))
    ident = dict(task=task, method=method, protocol=protocol, init_seed=init_seed, data_seed=data_seed,
                 hparams=hp, train_size=train_size)
    rec = dict(schema=SCHEMA_VERSION, run_key=run_key(ident), status="complete", task=task, method=method,
               protocol=protocol, leaky=protocol == "leaky", init_seed=init_seed, data_seed=data_seed,
               seed_mode=seed_mode or ("tied" if init_seed == data_seed else "separate"), hparams=hp,
               primary_metric=metric, higher_is_better=higher_is_better, test_metrics={f"test/{metric}": score},
               trainable_params=params, total_params=125_000_000, trainable_percent=100 * params / 125_000_000,
               train_size=train_size or TRAIN.get(task, 1000), steps=steps, epochs=3)
    rec.update(extra)
    return rec


def study(tasks=("cb", "copa", "wsc", "rte", "mrpc", "sst2", "qnli"), methods=("finetune", "lora", "adapter"),
          seeds=range(1, 11), rng_seed=0) -> list[dict]:
    """A small Table 2 study: per (task, method) a normal sample of scores; WSC constant (std 0)."""
    rng = np.random.default_rng(rng_seed)
    base = {"finetune": 0.0, "lora": 0.02, "adapter": -0.03, "bitfit": 0.0}
    out = []
    for t in tasks:
        mu = 0.55 + 0.35 * rng.random()
        for m in methods:
            for s in seeds:
                score = 0.6346 if t == "wsc" else mu + base[m] + rng.normal(0, 0.03 if TRAIN[t] < 1000 else 0.005)
                out.append(make_record(t, m, float(score), s, steps=TRAIN[t] // 8 * 3))
    return out
