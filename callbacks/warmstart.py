"""HeadWarmStart: LP-FT and EH-FT as two stages inside one ``fit``.

Stage 1 trains the classification head (LP-FT; Kumar et al., ICLR 2022), or the head plus PET parameters
(EH-FT; "Parameter-Efficient Tuning Makes a Good Classification Head", EMNLP 2022), or solves the head in
closed form (L-BFGS logistic regression on frozen features, Kumar's ``log_reg_sk.py``). At the switch the
pretrained backbone comes back bit for bit, PET parameters are discarded (or kept: EH-FT's ``reserve``
ablation), the stage-1 head is kept, and a fresh optimizer and warmup schedule start stage 2.

Contract with the LightningModule (attribute names configurable):

- ``backbone`` and ``head``: ``nn.Module`` attributes;
- optional PET contract: ``pet_parameter_names() -> list[str]`` (names as in the module's
  ``named_parameters()``) and ``drop_pet_layers()`` (removes the added layers, leaving the pretrained
  backbone with the same parameter objects);
- ``configure_optimizers`` builds its optimizer from the parameters that require grad (or from all of them:
  frozen ones get no gradient); the callback overrides its learning rates per stage and replaces its
  scheduler with a linear warmup and decay over the stage's steps (EH-FT's schedule);
- one optimizer; stages are counted in epochs, so ``Trainer(max_epochs=...)`` is required.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Optional, Sequence, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.types import LRSchedulerConfig
from torch import nn
from typing_extensions import override

from pl_petune.callbacks._common import (
    CallbackMisuse,
    SelectorLike,
    as_selector,
    callback_state,
    check_strategy,
    describe,
    get_submodule,
    linear_warmup_decay,
    rewrap_ddp,
    steps_per_epoch,
    submodule_prefix,
    tensor_sha256,
)

Solver = Literal["adamw", "lbfgs"]
# Kumar et al.'s sweep: C in logspace(-7, 2); ours defaults to 10 points of it.
DEFAULT_CS = tuple(float(c) for c in torch.logspace(-7, 2, 10, dtype=torch.float64).tolist())


class HeadWarmStart(Callback):
    r"""Two-stage head warm start: LP-FT (head first) and EH-FT (head plus PET first), then full finetuning.

    Stage 1 runs for ``stage1_epochs`` epochs (an int, or a fraction of ``max_epochs``: EH-FT uses 10 %,
    floored, at least 1) at ``stage1_lr`` with the head (+ PET parameters, + ``stage1_params``) trainable.
    At the first epoch of stage 2: the head is kept (weights and biases; ``keep_head_bias=False`` gives
    EH-FT's BitFit path, which copies weights only and re-initialises biases), PET layers are dropped unless
    ``reserve``, every backbone tensor is restored to its value at ``setup`` (the pretrained weights), the
    stage-2 trainable set is applied, and a fresh optimizer from ``configure_optimizers`` with
    ``stage2_lr`` and a restarted linear warmup/decay runs the remaining epochs. Early-stopping and
    checkpoint callbacks are reset at the switch (stage 1's best checkpoint is never the one tested, F6)
    and cannot stop fit during stage 1.

    With ``solver="lbfgs"`` stage 1 has no epochs: before epoch 0 the head's last ``nn.Linear`` is fitted
    by scikit-learn's L-BFGS ``LogisticRegression`` on the features that reach it (computed once, module in
    eval mode), normalised by the train features' global mean and std, over a sweep of ``C`` chosen by dev
    accuracy; the weights are mapped back to raw features. Layers of the head before that Linear keep
    their initialisation: use a linear head to reproduce Kumar et al.'s probe. A binary problem with two
    logits gets ``[-w/2, w/2]`` as in Kumar's code.

    Args:
        stage1_epochs: stage-1 length: an int >= 1, or a fraction in (0, 1) of ``max_epochs``. Default 0.1
            for ``adamw``; must stay unset (0) for ``lbfgs``.
        stage1_lr: stage-1 learning rate (EH-FT: 1e-3 head only, 5e-4 LoRA and BitFit, 5e-3 prefix).
        stage2_lr: stage-2 learning rate; ``None`` keeps the module's own (its ``configure_optimizers``).
        warmup_ratio: share of each stage's steps spent in linear warmup (EH-FT: 0.1); then linear decay to 0.
        solver: ``"adamw"``: the head is trained by gradient with AdamW (the module's optimizer, replaced by
            AdamW over the same groups if it is another class); ``"lbfgs"``: the closed-form probe above.
        train_pet: stage 1 also trains the module's PET parameters (``pet_parameter_names()``), EH-FT.
        stage1_params: extra stage-1 trainables, e.g. ``{"bias_only": True, "include": ["^backbone\\."]}``
            for EH-FT(BitFit) on a full-finetuning module.
        stage2_params: the stage-2 trainable set; ``None``: what the module trained at ``setup`` minus
            discarded PET parameters, or, if that holds no backbone parameter (a PET module), every
            parameter of backbone and head.
        reserve: keep the stage-1 PET parameters (and ``stage1_params`` values) in stage 2 (EH-FT's ablation).
        keep_head_bias: keep the stage-1 head biases; ``False`` re-initialises every head Linear's bias
            (nn.Linear's default init, seeded by ``head_bias_seed``) as EH-FT's BitFit path does.
        head_bias_seed: seed of that re-initialisation (the same on every rank).
        backbone_attr: attribute (dotted path) of the module holding the backbone.
        head_attr: attribute (dotted path) of the module holding the head.
        pet_names_fn: name of the module method listing PET parameter names.
        drop_pet_fn: name of the module method removing PET layers.
        cs: the ``C`` grid of the L-BFGS sweep (default ``logspace(-7, 2, 10)``).
        lbfgs_max_iter: L-BFGS iterations per ``C`` (warm-started along the grid).
        label_key: key of the labels in a dict batch (a tuple batch is ``(inputs, labels)``).
        forward_fn: ``fn(pl_module, batch)`` running the module on a batch for feature extraction; default:
            ``pl_module(**batch_without_labels)`` for dicts, ``pl_module(batch[0])`` for tuples.

    Raises:
        CallbackMisuse: a missing backbone or head attribute, a stage length out of range, no
            ``max_epochs``, a PET module without ``drop_pet_layers``, or an unsupported strategy.

    Example:
        >>> HeadWarmStart(stage1_epochs=0.1, stage1_lr=1e-3, stage2_lr=1e-5)   # LP-FT as in EH-FT
    """

    def __init__(
        self,
        stage1_epochs: Optional[Union[int, float]] = None,
        stage1_lr: float = 1e-3,
        stage2_lr: Optional[float] = None,
        warmup_ratio: float = 0.1,
        solver: Solver = "adamw",
        train_pet: bool = True,
        stage1_params: Optional[SelectorLike] = None,
        stage2_params: Optional[SelectorLike] = None,
        reserve: bool = False,
        keep_head_bias: bool = True,
        head_bias_seed: int = 0,
        backbone_attr: str = "backbone",
        head_attr: str = "head",
        pet_names_fn: str = "pet_parameter_names",
        drop_pet_fn: str = "drop_pet_layers",
        cs: Optional[Sequence[float]] = None,
        lbfgs_max_iter: int = 100,
        label_key: str = "labels",
        forward_fn: Optional[Callable[[LightningModule, Any], Any]] = None,
    ) -> None:
        super().__init__()
        if solver not in ("adamw", "lbfgs"):
            raise CallbackMisuse(f"HeadWarmStart.solver {solver!r} is unknown; use 'adamw' or 'lbfgs'")
        if solver == "lbfgs" and stage1_epochs not in (None, 0):
            raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={stage1_epochs} with solver='lbfgs': the probe is "
                                 "solved before epoch 0, so stage 1 has no epochs; remove stage1_epochs")
        if stage1_epochs is None:
            stage1_epochs = 0.1 if solver == "adamw" else 0
        if solver == "adamw":
            if isinstance(stage1_epochs, bool) or not isinstance(stage1_epochs, (int, float)):
                raise CallbackMisuse(f"HeadWarmStart.stage1_epochs must be an int or a float, got {stage1_epochs!r}")
            if isinstance(stage1_epochs, float) and not stage1_epochs.is_integer() and not 0 < stage1_epochs < 1:
                raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={stage1_epochs} is out of range; give a fraction "
                                     "of max_epochs in (0, 1) (EH-FT: 0.1) or a whole number of epochs >= 1")
            if isinstance(stage1_epochs, float) and stage1_epochs.is_integer():
                stage1_epochs = int(stage1_epochs)
            if isinstance(stage1_epochs, int) and stage1_epochs < 1:
                raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={stage1_epochs} is out of range; give a whole "
                                     "number of epochs >= 1 or a fraction of max_epochs in (0, 1)")
        for name, lr in (("stage1_lr", stage1_lr), ("stage2_lr", stage2_lr)):
            if lr is not None and not lr > 0:
                raise CallbackMisuse(f"HeadWarmStart.{name} must be > 0, got {lr}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise CallbackMisuse(f"HeadWarmStart.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.stage1_epochs = stage1_epochs
        self.stage1_lr = stage1_lr
        self.stage2_lr = stage2_lr
        self.warmup_ratio = warmup_ratio
        self.solver = solver
        self.train_pet = train_pet
        self.stage1_params = as_selector(stage1_params, "HeadWarmStart.stage1_params") if stage1_params else None
        self.stage2_params = as_selector(stage2_params, "HeadWarmStart.stage2_params") if stage2_params else None
        self.reserve = reserve
        self.keep_head_bias = keep_head_bias
        self.head_bias_seed = head_bias_seed
        self.backbone_attr = backbone_attr
        self.head_attr = head_attr
        self.pet_names_fn = pet_names_fn
        self.drop_pet_fn = drop_pet_fn
        self.cs = tuple(float(c) for c in (cs if cs is not None else DEFAULT_CS))
        if not self.cs or any(c <= 0 for c in self.cs):
            raise CallbackMisuse(f"HeadWarmStart.cs must be positive values, got {list(self.cs)}")
        self.lbfgs_max_iter = lbfgs_max_iter
        self.label_key = label_key
        self.forward_fn = forward_fn

        self._stage = 1
        self._s1 = 0  # stage-1 epochs, resolved at setup
        self._max_epochs = 0
        self._switch_epoch: Optional[int] = None
        self._pretrained: dict[str, torch.Tensor] = {}  # backbone params and buffers at setup, CPU
        self._volatile: list[str] = []  # the ones stage 1 may change (checkpointed)
        self._pet: list[str] = []
        self._stage1_names: list[str] = []
        self._stage2_default: Optional[list[str]] = []
        self._lbfgs: dict[str, Any] = {}
        self._head_sha: Optional[str] = None
        self._stage1_best: Optional[str] = None
        self._strict: Optional[bool] = None
        self._eval_strict: Optional[bool] = None  # strict_loading to restore after test/validate/predict
        self._optimizer_name = ""

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(solver=self.solver, stage1_epochs=self.stage1_epochs, reserve=self.reserve)

    @property
    def stage(self) -> int:
        """The current stage, 1 or 2."""
        return self._stage

    # ---- the module contract -------------------------------------------------------------------------
    def _parts(self, pl_module: LightningModule) -> tuple[nn.Module, nn.Module, str, str]:
        backbone = get_submodule(pl_module, self.backbone_attr, "backbone", "backbone_attr")
        head = get_submodule(pl_module, self.head_attr, "head", "head_attr")
        return backbone, head, submodule_prefix(pl_module, backbone), submodule_prefix(pl_module, head)

    def _pet_names(self, pl_module: LightningModule) -> list[str]:
        fn = getattr(pl_module, self.pet_names_fn, None)
        if not callable(fn):
            return []
        names = list(fn())
        known = {n for n, _ in pl_module.named_parameters()}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise CallbackMisuse(f"{type(pl_module).__name__}.{self.pet_names_fn}() returned {describe(unknown)}, "
                                 "which are not names in named_parameters(); return full parameter names")
        return names

    def _apply_trainable(self, pl_module: LightningModule, names: Sequence[str]) -> None:
        keep = set(names)
        for n, p in pl_module.named_parameters():
            p.requires_grad_(n in keep)

    # ---- setup: plan, snapshot, stage-1 trainables ---------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            # test/validate/predict from a checkpoint in a fresh process: a stage-2 checkpoint lacks the PET layers
            # this module was built with; load non-strictly, then on_load_checkpoint drops them and reloads strictly.
            if self._stage != 2 and not self.reserve and self._pet_names(pl_module) \
                    and callable(getattr(pl_module, self.drop_pet_fn, None)):
                self._eval_strict = pl_module.strict_loading
                pl_module.strict_loading = False
            return
        check_strategy(trainer, "HeadWarmStart")
        backbone, head, bb_prefix, head_prefix = self._parts(pl_module)
        max_epochs = trainer.max_epochs
        if max_epochs is None or max_epochs < 1:
            raise CallbackMisuse(f"HeadWarmStart counts stages in epochs but Trainer(max_epochs={max_epochs}); "
                                 "set trainer max_epochs")
        if isinstance(self.stage1_epochs, float):
            s1 = max(1, math.floor(self.stage1_epochs * max_epochs + 1e-9))
        else:
            s1 = int(self.stage1_epochs)
        if s1 >= max_epochs:
            raise CallbackMisuse(f"HeadWarmStart.stage1_epochs={self.stage1_epochs} gives {s1} stage-1 epochs of "
                                 f"max_epochs={max_epochs}, leaving none for stage 2; lower stage1_epochs or raise "
                                 "max_epochs")
        self._s1, self._max_epochs = s1, max_epochs
        self._pet = self._pet_names(pl_module)
        drop = getattr(pl_module, self.drop_pet_fn, None)
        if self._pet and not self.reserve and not callable(drop):
            raise CallbackMisuse(f"{type(pl_module).__name__} lists PET parameters but has no {self.drop_pet_fn}() "
                                 "to discard them at the switch; add it, or set reserve=True to keep them")
        initial = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        head_names = [n for n, _ in pl_module.named_parameters() if n.startswith(head_prefix)]
        if not head_names:
            raise CallbackMisuse(f"the head {self.head_attr!r} has no parameters; point head_attr at the trained head")
        extra = self.stage1_params.resolve(pl_module) if self.stage1_params is not None else []
        pet = self._pet if (self.train_pet and self.solver == "adamw") else []
        chosen = set(head_names) | set(pet) | (set(extra) if self.solver == "adamw" else set())
        self._stage1_names = [n for n, _ in pl_module.named_parameters() if n in chosen]
        default2 = [n for n in initial if self.reserve or n not in set(self._pet)]
        # a PET module trains no backbone parameter itself: its stage 2 is full finetuning (resolved after the drop)
        self._stage2_default = default2 if any(n.startswith(bb_prefix) for n in default2) else None
        # The pretrained backbone, as constructed (setup runs before any checkpoint is restored).
        self._pretrained = {bb_prefix + k: v.detach().to("cpu", copy=True)
                            for k, v in [*backbone.named_parameters(), *backbone.named_buffers()]}
        stage1_set, params = set(self._stage1_names), dict(pl_module.named_parameters())
        # what stage 1 can change: its trainable backbone parameters and floating buffers (e.g. BatchNorm stats)
        self._volatile = [n for n, t in self._pretrained.items()
                          if n in stage1_set or (n not in params and t.is_floating_point())]
        self._stage = 1
        self._apply_trainable(pl_module, self._stage1_names)
        if callable(drop) and not self.reserve:
            # A stage-2 checkpoint lacks the PET layers: load non-strictly, then on_load_checkpoint drops them and
            # reloads strictly.
            self._strict = pl_module.strict_loading
            pl_module.strict_loading = False

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._strict is not None:
            pl_module.strict_loading = self._strict
            self._strict = None
        if stage != "fit" and self._eval_strict is not None:
            pl_module.strict_loading = self._eval_strict
            self._eval_strict = None

    # ---- resume ---------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage": self._stage, "stage1_epochs": self._s1, "switch_epoch": self._switch_epoch,
                                 "lbfgs": dict(self._lbfgs), "head_sha256": self._head_sha,
                                 "stage1_best": self._stage1_best}
        if self._stage == 1:
            state["pretrained_volatile"] = {n: self._pretrained[n] for n in self._volatile}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # applied in on_load_checkpoint, which also sees the module and the model weights

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        state = callback_state(checkpoint, self.state_key)
        if state is None:
            return
        if trainer.state.fn != TrainerFn.FITTING:
            self._load_for_evaluation(pl_module, checkpoint, state)
            return
        if state["stage1_epochs"] != self._s1:
            raise CallbackMisuse(f"HeadWarmStart: the checkpoint ran {state['stage1_epochs']} stage-1 epochs, this "
                                 f"run plans {self._s1}; resume with the same stage1_epochs and max_epochs")
        self._switch_epoch = state["switch_epoch"]
        self._lbfgs = dict(state.get("lbfgs") or {})
        self._head_sha = state.get("head_sha256")
        self._stage1_best = state.get("stage1_best")
        if state["stage"] == 1:
            # frozen backbone tensors are pretrained in the checkpoint too; the ones stage 1 changes come from state
            table = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
            for n in self._pretrained:
                self._pretrained[n] = table[n].detach().to("cpu", copy=True)
            for n, t in state["pretrained_volatile"].items():
                self._pretrained[n] = t.detach().to("cpu", copy=True)
            if self._strict is not None:
                pl_module.load_state_dict(checkpoint["state_dict"], strict=self._strict)
            return
        # stage 2: rebuild stage 2's module tree and trainable set, then load the weights into it
        self._stage = 2
        self._pretrained = {}
        if not self.reserve:
            drop = getattr(pl_module, self.drop_pet_fn, None)
            if callable(drop):
                drop()
        self._apply_trainable(pl_module, self._stage2_names(pl_module))
        if self._strict is not None:
            pl_module.load_state_dict(checkpoint["state_dict"], strict=self._strict)

    def _load_for_evaluation(self, pl_module: LightningModule, checkpoint: dict[str, Any],
                             state: dict[str, Any]) -> None:
        """Give the module the checkpoint's tree (a stage-2 one has no PET layers), then load it strictly."""
        if self._eval_strict is None:
            return  # the module already has the checkpoint's tree (e.g. testing right after fit); Lightning loaded it
        if state["stage"] == 2:
            getattr(pl_module, self.drop_pet_fn)()
            self._stage = 2
        pl_module.load_state_dict(checkpoint["state_dict"], strict=self._eval_strict)

    # ---- optimizer and schedule per stage ----------------------------------------------------------
    def _stage2_names(self, pl_module: LightningModule) -> list[str]:
        if self.stage2_params is not None:
            return self.stage2_params.resolve(pl_module)
        if self._stage2_default is None:
            _, _, bb_prefix, head_prefix = self._parts(pl_module)
            pet = set(self._pet) if not self.reserve else set()
            return [n for n, _ in pl_module.named_parameters()
                    if (n.startswith(bb_prefix) or n.startswith(head_prefix)) and n not in pet]
        known = {n for n, _ in pl_module.named_parameters()}
        return [n for n in self._stage2_default if n in known]

    def _setup_stage_optimizer(self, trainer: Trainer, pl_module: LightningModule) -> None:
        stage = self._stage
        trainer.strategy.setup_optimizers(trainer)
        optimizers = trainer.strategy.optimizers
        if len(optimizers) != 1:
            raise CallbackMisuse(f"HeadWarmStart needs exactly one optimizer; configure_optimizers returned "
                                 f"{len(optimizers)}")
        opt = optimizers[0]
        lr = self.stage1_lr if stage == 1 else self.stage2_lr
        if stage == 1 and self.solver == "adamw" and not isinstance(opt, torch.optim.AdamW):
            groups = [{"params": g["params"], "weight_decay": g.get("weight_decay", 0.0)} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=lr)
        for g in opt.param_groups:
            base = lr if lr is not None else g.get("initial_lr", g["lr"])
            g.pop("initial_lr", None)
            g["lr"] = base
        epochs = self._s1 if stage == 1 else self._max_epochs - self._s1
        total = max(1, epochs * steps_per_epoch(trainer))
        warmup = math.ceil(self.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_warmup_decay(warmup, total))
        trainer.strategy.optimizers = [opt]
        trainer.strategy.lr_scheduler_configs = [LRSchedulerConfig(sched, interval="step", name=f"stage{stage}")]
        self._optimizer_name = type(opt).__name__

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Early stopping must not end fit inside stage 1: stage 2 always gets at least one epoch.
        trainer.fit_loop.min_epochs = max(trainer.fit_loop.min_epochs or 0, self._s1 + 1)
        # A fresh optimizer for the current stage; on resume the checkpoint's state then loads onto it.
        self._setup_stage_optimizer(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.solver == "lbfgs" and self._stage == 1 and not self._lbfgs:
            self._solve_lbfgs(trainer, pl_module)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stage == 1 and trainer.current_epoch >= self._s1:
            self._switch(trainer, pl_module)

    # ---- the switch -----------------------------------------------------------------------------------
    def _switch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        backbone, head, bb_prefix, head_prefix = self._parts(pl_module)
        if not self.keep_head_bias:
            self._reinit_head_bias(head)
        self._head_sha = tensor_sha256({k: v for k, v in head.state_dict().items()})
        keep = set(self._pet) | (set(self.stage1_params.resolve(pl_module)) if self.stage1_params else set())
        keep = keep if self.reserve else set()
        # map tensors to their pretrained values by identity (dropping PET layers may rename the backbone's tensors),
        # else by name (a drop that rebuilds the backbone)
        table = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
        by_id = {id(table[n]): (n, v) for n, v in self._pretrained.items() if n in table and n not in keep}
        if not self.reserve:
            drop = getattr(pl_module, self.drop_pet_fn, None)
            if callable(drop):
                drop()
            backbone = get_submodule(pl_module, self.backbone_attr, "backbone", "backbone_attr")
            bb_prefix = submodule_prefix(pl_module, backbone)
        restored = 0
        with torch.no_grad():
            for name, t in [*backbone.named_parameters(), *backbone.named_buffers()]:
                hit = by_id.get(id(t))
                if hit is None and bb_prefix + name in self._pretrained and bb_prefix + name not in keep:
                    # drop_pet_layers rebuilt the backbone (new tensors under the pretrained names)
                    hit = (bb_prefix + name, self._pretrained[bb_prefix + name])
                if hit is None:
                    if self.reserve:
                        continue
                    raise CallbackMisuse(f"HeadWarmStart: backbone tensor {name!r} did not exist at setup, so it has "
                                         f"no pretrained value; {self.drop_pet_fn}() must remove every added layer")
                t.copy_(hit[1])
                restored += 1
        self._pretrained = {}
        self._apply_trainable(pl_module, self._stage2_names(pl_module))
        rewrap_ddp(trainer)
        self._stage = 2
        self._switch_epoch = trainer.current_epoch
        self._reset_selection_callbacks(trainer)
        self._setup_stage_optimizer(trainer, pl_module)

    def _reinit_head_bias(self, head: nn.Module) -> None:
        gen = torch.Generator().manual_seed(self.head_bias_seed)
        with torch.no_grad():
            for mod in head.modules():
                if isinstance(mod, nn.Linear) and mod.bias is not None:
                    bound = 1.0 / math.sqrt(mod.in_features) if mod.in_features > 0 else 0.0
                    fresh = torch.rand(mod.bias.shape, generator=gen, dtype=torch.float64) * 2 * bound - bound
                    mod.bias.copy_(fresh.to(mod.bias.dtype))

    def _reset_selection_callbacks(self, trainer: Trainer) -> None:
        """Stage 2 selects and stops on its own: stage 1's best score and patience do not carry over (F6)."""
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "monitor", None) is None:
                continue
            if cb.best_model_path:
                self._stage1_best = cb.best_model_path
            cb.best_k_models = {}
            cb.kth_best_model_path = ""
            cb.best_model_score = None
            cb.best_model_path = ""
            cb.current_score = None
            cb.kth_value = torch.tensor(torch.inf if cb.mode == "min" else -torch.inf)
        for cb in trainer.early_stopping_callbacks:
            cb.wait_count = 0
            cb.stopped_epoch = 0
            cb.best_score = torch.tensor(torch.inf if cb.monitor_op == torch.lt else -torch.inf)
        trainer.should_stop = False

    # ---- the L-BFGS probe ----------------------------------------------------------------------------
    def _run_batch(self, pl_module: LightningModule, batch: Any) -> Any:
        if self.forward_fn is not None:
            return self.forward_fn(pl_module, batch)
        if isinstance(batch, dict):
            return pl_module(**{k: v for k, v in batch.items() if k != self.label_key})
        return pl_module(batch[0])

    def _labels(self, batch: Any) -> torch.Tensor:
        if isinstance(batch, dict):
            if self.label_key not in batch:
                raise CallbackMisuse(f"HeadWarmStart: batch has no {self.label_key!r}; keys: {sorted(batch)}; "
                                     "set label_key")
            return batch[self.label_key]
        return batch[1]

    def _features(self, trainer: Trainer, pl_module: LightningModule, loader: Any, last: nn.Linear):
        feats: list[torch.Tensor] = []
        handle = last.register_forward_pre_hook(lambda _m, args: feats.append(args[0].detach().float().cpu()))
        labels: list[torch.Tensor] = []
        try:
            for batch in loader:
                batch = trainer.strategy.batch_to_device(batch)
                self._run_batch(pl_module, batch)
                labels.append(self._labels(batch).detach().cpu())
        finally:
            handle.remove()
        x, y = torch.cat(feats), torch.cat(labels)
        if x.dim() != 2 or x.shape[0] != y.shape[0]:
            raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs'): {x.shape[0]} feature rows for {y.shape[0]} labels "
                                 "(multiple choice?); use solver='adamw'")
        if y.is_floating_point():
            raise CallbackMisuse("HeadWarmStart(solver='lbfgs') needs class labels, got floats (regression); "
                                 "use solver='adamw'")
        return self._gather(trainer, x), self._gather(trainer, y)

    @staticmethod
    def _gather(trainer: Trainer, t: torch.Tensor) -> torch.Tensor:
        if trainer.world_size == 1:
            return t
        n = torch.tensor([t.shape[0]], device=trainer.strategy.root_device)
        counts = trainer.strategy.all_gather(n).flatten().tolist()
        pad = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype)
        pad[: t.shape[0]] = t
        allt = trainer.strategy.all_gather(pad.to(trainer.strategy.root_device)).cpu()
        return torch.cat([allt[r, : int(c)] for r, c in enumerate(counts)])

    def _solve_lbfgs(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from sklearn.linear_model import LogisticRegression

        _, head, _, _ = self._parts(pl_module)
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs') fits the head's last nn.Linear, but "
                                 f"{self.head_attr!r} has none; use solver='adamw'")
        last = linears[-1]
        _ = trainer.estimated_stepping_batches  # sets up the train dataloader
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
        dev_loader = trainer.val_dataloaders
        if dev_loader is None:
            raise CallbackMisuse("HeadWarmStart(solver='lbfgs') chooses C on the development split, but fit has no "
                                 "val dataloader; give one (or use DevSplitEarlyStopping(dev_fraction=...))")
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                xtr, ytr = self._features(trainer, pl_module, trainer.train_dataloader, last)
                xdev, ydev = self._features(trainer, pl_module, dev_loader, last)
        finally:
            pl_module.train(was_training)
        result = None
        if trainer.is_global_zero:
            xtr_np, ytr_np = xtr.double().numpy(), ytr.numpy()
            mean, std = float(xtr_np.mean()), float(xtr_np.std()) or 1.0
            ztr, zdev = (xtr_np - mean) / std, (xdev.double().numpy() - mean) / std
            clf = LogisticRegression(warm_start=True, max_iter=self.lbfgs_max_iter, fit_intercept=last.bias is not None)
            best = None
            import warnings

            for c in self.cs:
                clf.C = c
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # convergence warnings at max_iter, as in Kumar's sweep
                    clf.fit(ztr, ytr_np)
                acc = float((clf.predict(zdev) == ydev.numpy()).mean())
                if best is None or acc > best[0]:
                    best = (acc, c, clf.coef_.copy(), (clf.intercept_.copy() if last.bias is not None else None),
                            clf.classes_.copy(), float(clf.score(ztr, ytr_np)))
            acc, c, coef, icpt, classes, train_acc = best
            result = {"coef": coef / std, "intercept": (icpt - coef.sum(1) * mean / std) if icpt is not None else None,
                      "classes": classes.tolist(), "C": c, "dev_accuracy": acc, "train_accuracy": train_acc,
                      "n_train": int(xtr.shape[0]), "n_dev": int(xdev.shape[0]), "features": int(xtr.shape[1]),
                      "cs": list(self.cs), "normalisation": {"mean": mean, "std": std}}
        result = trainer.strategy.broadcast(result, src=0)
        w, b = self._map_probe(result, last)
        with torch.no_grad():
            last.weight.copy_(w.to(last.weight.dtype))
            if last.bias is not None and b is not None:
                last.bias.copy_(b.to(last.bias.dtype))
        self._lbfgs = {k: v for k, v in result.items() if k not in ("coef", "intercept")}

    @staticmethod
    def _map_probe(result: dict[str, Any], last: nn.Linear) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        import numpy as np

        coef = torch.from_numpy(np.asarray(result["coef"]))
        icpt = result["intercept"]
        icpt = torch.from_numpy(np.asarray(icpt)) if icpt is not None else None
        classes = [int(c) for c in result["classes"]]
        out = last.out_features
        if len(classes) == 2 and coef.shape[0] == 1:
            if out == 1:
                return coef, icpt
            if out == 2 and classes == [0, 1]:
                # Kumar et al.: a binary probe becomes two softmax logits [-w/2, w/2]
                return torch.cat([-coef / 2, coef / 2]), (torch.cat([-icpt / 2, icpt / 2]) if icpt is not None else None)
        if classes == list(range(out)) and coef.shape[0] == out:
            return coef, icpt
        raise CallbackMisuse(f"HeadWarmStart(solver='lbfgs'): train labels {classes} do not map onto the head's "
                             f"{out} outputs; every class must occur in train and the head must have one output per "
                             "class (or one for binary)")

    # ---- the run record --------------------------------------------------------------------------------
    def record_extra(self) -> dict[str, Any]:
        """The stage plan, the head's source and the solver, for the run record (``petune fit`` collects it)."""
        head_source = ("L-BFGS logistic regression on frozen features (sklearn), "
                       f"C={self._lbfgs.get('C')}" if self.solver == "lbfgs" else
                       f"stage 1 ({self._optimizer_name or 'AdamW'}, lr {self.stage1_lr}, {self._s1} epochs)")
        if not self.keep_head_bias:
            head_source += "; weights only, biases re-initialised"
        return {"head_warm_start": {
            "solver": self.solver,
            "stage_plan": {
                "stage1": {"epochs": self._s1, "lr": self.stage1_lr, "warmup_ratio": self.warmup_ratio,
                           "trainable": len(self._stage1_names), "train_pet": self.train_pet,
                           "extra": self.stage1_params.describe() if self.stage1_params else None},
                "stage2": {"epochs": self._max_epochs - self._s1, "lr": self.stage2_lr,
                           "warmup_ratio": self.warmup_ratio,
                           "trainable": self.stage2_params.describe() if self.stage2_params else "module default"},
            },
            "stage": self._stage, "switch_epoch": self._switch_epoch, "reserve": self.reserve,
            "pet_parameters": len(self._pet), "head_source": head_source, "head_sha256_at_switch": self._head_sha,
            "stage1_best_checkpoint": self._stage1_best, "lbfgs": dict(self._lbfgs) or None,
        }}
