"""Speed-up of ``petune sweep --workers 2`` over ``--workers 1`` on this machine: repeated, interleaved arms.

The same small grid (2 configurations x 2 seeds of a tiny random BERT on real CB, 2 epochs on 64 training
examples) runs ``--repeats`` times with 1 worker and as often with 2, each time into a fresh store and run
folder. The arms alternate in ABBA order (1, 2, 2, 1, 1, 2, ...), so a drift in the machine's load (other jobs,
a warming disk cache) falls on both arms alike; the ratio of each adjacent pair is computed, and the median of
those ratios is the result (the median of each arm's wall times is printed too). Each run is a whole
``petune fit`` process, so the start-up cost of a run (imports, tokenizer, data) is part of what is measured,
as it is in a real sweep. The runner gives each worker ``cpu_count // workers`` threads.

Usage: python benchmarks/sweep_workers.py [--repeats 3] [--seeds 2] [--epochs 2] [--train-limit 64]
Needs the shared data (``$PETUNE_DATA_DIR``, default ../shared/data).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tiny_backbone(folder: Path) -> str:
    """A 2-layer, 32-hidden random BERT with the MiniLM tokenizer (the test suite's tiny model)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pl_petune.backbones import resolve_backbone

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=140)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_backbone("minilm")).save_pretrained(folder)
    return str(folder)


def write_sweep(path: Path, backbone: str, data_dir: str, out_dir: Path, seeds: int, epochs: int, limit: int) -> None:
    seed_list = ", ".join(str(s) for s in range(1, seeds + 1))
    path.write_text(f"""method: grid
metric: {{name: dev/f1_macro, goal: maximize}}
command: ['${{env}}', '${{interpreter}}', -m, pl_petune, fit, --config, recipes/quickstart.yaml, '${{args}}']
parameters:
  model.init_args.head: {{values: [mlp, linear]}}
  run.seed: {{values: [{seed_list}]}}
  model.init_args.backbone: {{value: {backbone}}}
  data.data_dir: {{value: {data_dir}}}
  data.train_limit: {{value: {limit}}}
  trainer.max_epochs: {{value: {epochs}}}
  trainer.enable_progress_bar: {{value: false}}
  run.out_dir: {{value: {out_dir}}}
""")


def abba(repeats: int) -> list[int]:
    """The worker counts in run order: 1, 2, 2, 1, 1, 2, ... (``repeats`` of each)."""
    pairs = [(1, 2) if i % 2 == 0 else (2, 1) for i in range(repeats)]
    return [w for pair in pairs for w in pair]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each arm (default 3)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-limit", type=int, default=64)
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1, got {args.repeats}")
    data_dir = os.environ.get("PETUNE_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_NUM_THREADS", None)  # let the runner split the cores between workers
    times: dict[int, list[float]] = {1: [], 2: []}
    ratios: list[float] = []
    n_runs = 2 * args.seeds
    with tempfile.TemporaryDirectory(prefix="petune-bench-") as tmp:
        tmp_path = Path(tmp)
        env["PETUNE_CACHE"] = str(tmp_path / "cache")
        backbone = tiny_backbone(tmp_path / "tiny")
        # warm the tokenized-data cache once (one run), so no timed sweep pays for it
        order = [0] + abba(args.repeats)
        for step, workers in enumerate(order):
            out = tmp_path / f"step{step}-w{workers}"
            sweep = out / "grid.yaml"
            out.mkdir()
            write_sweep(sweep, backbone, data_dir, out / "runs", args.seeds if workers else 1, args.epochs,
                        args.train_limit)
            cmd = [sys.executable, "-m", "pl_petune", "sweep", str(sweep), "--workers", str(max(workers, 1)),
                   "--store", str(out / "results.sqlite"), "--no-progress"]
            t0 = time.perf_counter()
            res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            took = time.perf_counter() - t0
            if res.returncode != 0:
                print(res.stderr[-3000:], file=sys.stderr)
                return 1
            if not workers:
                continue
            times[workers].append(took)
            print(f"step {step}: {workers} worker(s): {took:6.1f} s wall for {n_runs} runs", flush=True)
            if step % 2 == 0:  # a pair (1, 2) or (2, 1) is complete
                pair = {order[step - 1]: times[order[step - 1]][-1], workers: took}
                ratios.append(pair[1] / pair[2])
    med = {w: statistics.median(t) for w, t in times.items()}
    print(f"median wall time: 1 worker {med[1]:.1f} s, 2 workers {med[2]:.1f} s ({args.repeats} each, ABBA order)")
    print(f"speed-up of 2 workers over 1: median {statistics.median(ratios):.2f}x over {len(ratios)} pairs "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)}) on {os.cpu_count()} CPU cores "
          f"({n_runs} runs, {args.epochs} epochs x {args.train_limit} examples, tiny BERT)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
