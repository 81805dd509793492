"""HeadWarmStart: LP-FT and EH-FT as two stages inside one ``fit``.

Stage 1 trains the classification head (LP-FT; Kumar et al., ICLR 2022), or the head plus PET parameters
(EH-FT; "Parameter-Efficient Tuning Makes a Good Classification Head", EMNLP 2022), or solves the head in
closed form (:mod:`pl_petune.callbacks.probe`). At the switch the pretrained backbone comes back bit for bit,
PET parameters are discarded (or kept: EH-FT's ``reserve`` ablation), the stage-1 head is kept, and a fresh
optimizer and warmup schedule start stage 2.

The module contract (``backbone``/``head`` attributes, the optional PET methods, one optimizer) is in the
class docstring and docs/callbacks.md and is read by ``_module_parts``; the stage mechanics are plain
functions in ``_twostage``; the closed-form probe is :mod:`~pl_petune.callbacks.probe`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional, Sequence, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from pl_petune.callbacks import probe
from pl_petune.callbacks._common import (
    CallbackMisuse,
    SelectorLike,
    as_selector,
    check_strategy,
    resolve,
    rewrap_ddp,
    submodule_prefix,
    tensor_sha256,
)
from pl_petune.callbacks._module_parts import ModuleParts
from pl_petune.callbacks._twostage import (
    PRETRAINED_KEY,
    check_plan,
    check_resumed_plan,
    find_state,
    fresh_states,
    head_bias_seed,
    pretrained_snapshot,
    record,
    reinit_linear_biases,
    reset_callbacks,
    resolve_plan,
    restore_pretrained,
    stage_optimizer,
)
from pl_petune.callbacks.selection import set_trainable
from torch import nn
from typing_extensions import override

Solver = Literal["adamw", "lbfgs"]


class HeadWarmStart(Callback):
    r"""Two-stage head warm start: LP-FT (head first) and EH-FT (head plus PET first), then full finetuning.

    The module has ``backbone`` and ``head`` attributes (``backbone_attr``/``head_attr``, dotted paths allowed,
    e.g. into a PEFT wrapper) and one optimizer from ``configure_optimizers``; a PET module also has
    ``pet_parameter_names()`` and ``drop_pet_layers()`` (removes the added layers and keeps the pretrained
    tensors, e.g. ``self.model = self.model.unload()`` for PEFT); backbone and head are followed through the
    drop, so paths that change are fine. ``Trainer(max_epochs=...)`` is required.

    Stage 1 runs ``stage1_epochs`` epochs (an int, or a fraction of ``max_epochs``: EH-FT uses 10 %, floored,
    at least 1) at ``stage1_lr`` with the head (+ PET parameters, + ``stage1_params``) trainable. At the
    first epoch of stage 2: the head is kept (``keep_head_bias=False`` gives EH-FT's BitFit path: weights
    kept, biases re-initialised), PET layers are dropped unless ``reserve``, every backbone tensor is restored
    to its value at fit start (the pretrained weights, after the module's ``setup``/``configure_model``), the
    stage-2 trainable set is applied, and a fresh optimizer with ``stage2_lr`` and a restarted linear
    warmup/decay runs the remaining epochs. Checkpoint and early-stopping callbacks get back the state they
    had at fit start (through their ``load_state_dict``), so stage 2 selects and stops on its own, and no
    early stop can end fit inside stage 1.

    With ``solver="lbfgs"`` stage 1 has no epochs: before epoch 0 the head's last ``nn.Linear`` is fitted by
    Kumar et al.'s L-BFGS probe (:mod:`pl_petune.callbacks.probe`, scikit-learn). Layers of the head before
    that Linear keep their initialisation: use a linear head to reproduce Kumar et al.'s probe.

    The checkpoint state holds the stage, the resolved plan and, in stage 1, the pretrained values of the
    tensors stage 1 may change. Loading a checkpoint (resume, test, validate, predict): a checkpoint whose
    weights lack the PET parameters (stage 2) gets a module without PET layers just before Lightning loads it,
    strictly; the state is then found under this callback's key or as the single HeadWarmStart entry, however
    the callback was spelt, and checked against the weights and, for a resume, against this run's plan. A
    checkpoint with callback states but none of HeadWarmStart's is refused, and so is a weights-only one for
    a resume: weights are never loaded silently into the wrong tree.

    Args:
        stage1_epochs: stage-1 length: an int >= 1, or a fraction in (0, 1) of ``max_epochs``. Default 0.1
            for ``adamw``; must stay unset (0) for ``lbfgs``.
        stage1_lr: stage-1 learning rate (EH-FT: 1e-3 head only, 5e-4 LoRA and BitFit, 5e-3 prefix).
        stage2_lr: stage-2 learning rate; ``None`` keeps the module's own (its ``configure_optimizers``).
        warmup_ratio: share of each stage's steps spent in linear warmup (EH-FT: 0.1); then linear decay to 0.
        solver: ``"adamw"``: the head trains by gradient (the module's optimizer, replaced by AdamW over the
            same groups if it is another class); ``"lbfgs"``: the closed-form probe.
        train_pet: stage 1 also trains the module's PET parameters (``pet_parameter_names()``), EH-FT.
        stage1_params: extra stage-1 trainables, e.g. ``{"bias_only": True, "include": ["^backbone\\."]}``
            for EH-FT(BitFit) on a full-finetuning module.
        stage2_params: the stage-2 trainable set; ``None``: what the module trained at fit start minus
            discarded PET parameters, or, if that holds no backbone parameter (a PET module), every
            parameter of backbone and head.
        reserve: keep the stage-1 PET parameters (and ``stage1_params`` values) in stage 2 (EH-FT's ablation).
        keep_head_bias: keep the stage-1 head biases; ``False`` re-initialises every head Linear's bias
            (nn.Linear's default init) as EH-FT's BitFit path does.
        head_bias_seed: seed of that re-initialisation; default ``None``: the run's own seed, as the EH-FT
            reference draws it (parity): the module's ``init_seed`` (its attribute or hyper-parameter, when it
            has one: new parameters are drawn under the weight-init seed), else the seed given to
            ``seed_everything``, else ``torch.initial_seed()``.
        backbone_attr: attribute (dotted path) of the module holding the backbone.
        head_attr: attribute (dotted path) of the module holding the head.
        pet_names_fn: name of the module method listing PET parameter names.
        drop_pet_fn: name of the module method removing PET layers.
        cs: the values of ``C`` (inverse regularisation strength) the L-BFGS probe sweeps; default Kumar et al.'s
            50 values of ``logspace(-7, 2)``. The name is a recipe and record key, kept as it is.
        lbfgs_max_iter: L-BFGS iterations per ``C`` (warm-started along the sweep); default Kumar's 20.
        label_key: key of the labels in a dict batch (a tuple batch is ``(inputs, labels)``).
        forward_fn: ``fn(pl_module, batch)`` running the module on a batch for the probe's features; default
            ``pl_module(**batch_without_labels)`` for dicts, ``pl_module(batch[0])`` for tuples.

    Raises:
        CallbackMisuse: bad arguments (at construction); a missing backbone or head, a stage plan out of
            range, a PET module without ``drop_pet_layers``, two HeadWarmStart in one Trainer, an unsupported
            strategy (at fit start); a checkpoint without findable HeadWarmStart state or with another plan.

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
        head_bias_seed: Optional[int] = None,
        backbone_attr: str = "backbone",
        head_attr: str = "head",
        pet_names_fn: str = "pet_parameter_names",
        drop_pet_fn: str = "drop_pet_layers",
        cs: Optional[Sequence[float]] = None,
        lbfgs_max_iter: int = probe.KUMAR_MAX_ITER,
        label_key: str = "labels",
        forward_fn: Optional[Callable[[LightningModule, Any], Any]] = None,
    ) -> None:
        super().__init__()
        self.stage1_epochs = check_plan(solver, stage1_epochs)
        for name, lr in (("stage1_lr", stage1_lr), ("stage2_lr", stage2_lr)):
            if lr is not None and not lr > 0:
                raise CallbackMisuse(f"HeadWarmStart.{name} must be > 0, got {lr}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise CallbackMisuse(f"HeadWarmStart.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.cs = probe.check_settings("HeadWarmStart", cs, lbfgs_max_iter)
        if solver == "lbfgs":
            probe.require_sklearn("HeadWarmStart")
        self.stage1_lr, self.stage2_lr, self.warmup_ratio, self.solver = stage1_lr, stage2_lr, warmup_ratio, solver
        self.train_pet = train_pet
        self.stage1_params = as_selector(stage1_params, "HeadWarmStart.stage1_params") if stage1_params else None
        self.stage2_params = as_selector(stage2_params, "HeadWarmStart.stage2_params") if stage2_params else None
        self.reserve, self.keep_head_bias, self.head_bias_seed = reserve, keep_head_bias, head_bias_seed
        self.backbone_attr, self.head_attr = backbone_attr, head_attr
        self.pet_names_fn, self.drop_pet_fn = pet_names_fn, drop_pet_fn
        self._module_parts = ModuleParts(self)
        self.lbfgs_max_iter, self.label_key, self.forward_fn = lbfgs_max_iter, label_key, forward_fn

        self._stage = 1
        self._stage1_epochs = 0  # resolved at setup from max_epochs
        self._max_epochs = 0
        self._switch_epoch: Optional[int] = None
        self._pretrained: dict[str, torch.Tensor] = {}  # backbone params and buffers at fit start, CPU
        self._changeable: list[str] = []  # those stage 1 may change (checkpointed while in stage 1)
        self._pet: list[str] = []
        self._stage1_names: list[str] = []
        self._stage1_count: Optional[int] = None  # kept in the checkpoint: a run resumed in stage 2 records it too
        self._stage2_default: Optional[list[str]] = None
        self._resume: Optional[dict[str, Any]] = None
        self._fresh_states: Optional[list[tuple[Callback, dict[str, Any]]]] = None
        self._lbfgs: dict[str, Any] = {}
        self._head_sha: Optional[str] = None
        self._head_bias_seed_used: Optional[int] = None
        self._stage1_best: Optional[str] = None
        self._tree_hook: Any = None  # armed from setup until Lightning's checkpoint restore (or the stage's start)
        self._optimizer_name = ""

    @property
    @override
    def state_key(self) -> str:
        # No spelling of the plan in the key (stage1_epochs=2 vs 0.5): a checkpoint is found however the
        # callback is configured, and the resolved plan stored in the state is compared instead.
        return self._generate_state_key(solver=self.solver)

    @property
    def stage(self) -> int:
        """The current stage, 1 or 2."""
        return self._stage

    # ---- the module contract (read by ModuleParts) ----------------------------------------------------
    def _parts(self, pl_module: LightningModule) -> tuple[nn.Module, nn.Module]:
        return self._module_parts.backbone_and_head(pl_module)

    def _pet_names(self, pl_module: nn.Module) -> list[str]:
        return self._module_parts.pet_names(pl_module)

    def _can_drop(self, pl_module: LightningModule) -> bool:
        return not self.reserve and self._module_parts.can_drop(pl_module)

    def _drop_pet(self, pl_module: nn.Module) -> None:
        self._pet = self._pet or self._pet_names(pl_module)  # kept for the record once the layers are gone
        self._module_parts.drop(pl_module)

    # ---- setup: the plan -----------------------------------------------------------------------------
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            check_strategy(trainer, "HeadWarmStart")
            others = [cb for cb in trainer.callbacks if isinstance(cb, HeadWarmStart) and cb is not self]  # type: ignore[attr-defined]
            if others:
                raise CallbackMisuse("HeadWarmStart: the Trainer holds two HeadWarmStart callbacks; one fit has one "
                                     "stage switch, keep one")
            self._stage1_epochs, self._max_epochs = resolve_plan(self.stage1_epochs, trainer.max_epochs)
        # A stage-2 checkpoint lacks the PET layers this module is built with: give the module the checkpoint's
        # tree just before Lightning loads it (strictly, as the module asks), judging by the checkpoint's own keys.
        if self._tree_hook is None and self._can_drop(pl_module):
            self._tree_hook = pl_module.register_load_state_dict_pre_hook(self._match_tree)

    def _match_tree(self, module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
        self._disarm()
        pet = set(self._pet_names(module))
        if prefix or not pet or pet & set(state_dict):
            return  # a stage-1 tree (or a partial one: the strict load then names what is missing)
        self._drop_pet(module)
        self._stage = 2

    def _disarm(self) -> None:
        if self._tree_hook is not None:
            self._tree_hook.remove()
            self._tree_hook = None

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._disarm()

    # ---- checkpoints ---------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"stage": self._stage, "stage1_epochs": self._stage1_epochs,
                                 "max_epochs": self._max_epochs, "switch_epoch": self._switch_epoch,
                                 "lbfgs": dict(self._lbfgs), "head_sha256": self._head_sha,
                                 "head_bias_seed": self._head_bias_seed_used, "stage1_best": self._stage1_best,
                                 "stage1_trainable": self._stage1_count}
        if self._stage == 1:
            state[PRETRAINED_KEY] = {n: self._pretrained[n] for n in self._changeable}
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # applied in on_load_checkpoint, which also sees the module and the weights

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        # Lightning calls this after loading the weights, and only for checkpoints with callback states.
        state = find_state(checkpoint, self.state_key, type(self).__qualname__)
        dropped = self._module_parts.dropped
        if self._can_drop(pl_module) and dropped != (state["stage"] == 2):
            raise CallbackMisuse(f"HeadWarmStart: the checkpoint's state says stage {state['stage']} but its weights "
                                 f"are a stage-{1 + dropped} tree (with{'out' if dropped else ''} the PET layers); "
                                 "the checkpoint was edited or mixed up")
        self._stage = 2 if state["stage"] == 2 else self._stage
        self._stage1_count = state.get("stage1_trainable", self._stage1_count)
        if trainer.state.fn != TrainerFn.FITTING:
            return
        if self._fresh_states is None:
            self._fresh_states = fresh_states(trainer)  # other callbacks are set up and not yet restored
        check_resumed_plan(state, self._stage1_epochs, self._max_epochs)
        self._resume = state

    # ---- fit start: the trainable set, the snapshot, the stage's optimizer ----------------------------
    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._disarm()
        if self._fresh_states is None:
            self._fresh_states = fresh_states(trainer)
        if trainer.ckpt_path and self._resume is None:
            raise CallbackMisuse(f"HeadWarmStart: cannot resume fit from {trainer.ckpt_path}: it holds no callback "
                                 "states (a weights-only checkpoint); resume from a full one (e.g. last.ckpt)")
        # Early stopping must not end fit inside stage 1: stage 2 always gets at least one epoch.
        trainer.fit_loop.min_epochs = max(trainer.fit_loop.min_epochs or 0, self._stage1_epochs + 1)
        backbone, head = self._parts(pl_module)
        bb_prefix, head_prefix = submodule_prefix(pl_module, backbone), submodule_prefix(pl_module, head)
        self._pet = self._pet_names(pl_module) or self._pet
        if self._pet and not self.reserve and not callable(getattr(pl_module, self.drop_pet_fn, None)):
            raise CallbackMisuse(f"HeadWarmStart.drop_pet_fn: {type(pl_module).__name__} lists PET parameters but has "
                                 f"no {self.drop_pet_fn}() to discard them at the switch; add it, or set reserve=True")
        names = [n for n, _ in pl_module.named_parameters()]
        head_names = [n for n in names if n.startswith(head_prefix)]
        if not head_names:
            raise CallbackMisuse(f"HeadWarmStart.head_attr={self.head_attr!r} has no parameters; point it at the "
                                 "trained head")
        initial = [n for n, p in pl_module.named_parameters() if p.requires_grad]
        default2 = [n for n in initial if self.reserve or n not in set(self._pet)]
        # a PET module trains no backbone parameter itself: its stage 2 is full finetuning (resolved after the drop)
        self._stage2_default = default2 if any(n.startswith(bb_prefix) for n in default2) else None
        if self._stage == 2:
            set_trainable(pl_module, self._stage2_names(pl_module))
        else:
            extra = resolve(self.stage1_params, pl_module, "HeadWarmStart.stage1_params") if self.stage1_params else []
            pet = self._pet if (self.train_pet and self.solver == "adamw") else []
            chosen = set(head_names) | set(pet) | (set(extra) if self.solver == "adamw" else set())
            self._stage1_names = [n for n in names if n in chosen]
            self._stage1_count = len(self._stage1_names)
            # the pretrained backbone: after the module's setup()/configure_model(), before any step
            self._pretrained, self._changeable = pretrained_snapshot(pl_module, backbone, self._stage1_names,
                                                                     self._resume)
            set_trainable(pl_module, self._stage1_names)
        if self._resume is not None:
            saved = self._resume
            self._switch_epoch, self._lbfgs = saved["switch_epoch"], dict(saved.get("lbfgs") or {})
            self._head_sha = saved.get("head_sha256")
            self._head_bias_seed_used, self._stage1_best = saved.get("head_bias_seed"), saved.get("stage1_best")
            self._resume = None
        rewrap_ddp(trainer)
        # A fresh optimizer for the current stage; on resume the checkpoint's state then loads onto it.
        self._setup_stage_optimizer(trainer)

    def _stage2_names(self, pl_module: LightningModule) -> list[str]:
        if self.stage2_params is not None:
            return resolve(self.stage2_params, pl_module, "HeadWarmStart.stage2_params")
        if self._stage2_default is None:
            backbone, head = self._parts(pl_module)
            prefixes = (submodule_prefix(pl_module, backbone), submodule_prefix(pl_module, head))
            pet = set(self._pet) if not self.reserve else set()
            return [n for n, _ in pl_module.named_parameters() if n.startswith(prefixes) and n not in pet]
        known = {n for n, _ in pl_module.named_parameters()}
        return [n for n in self._stage2_default if n in known]

    def _setup_stage_optimizer(self, trainer: Trainer) -> None:
        in_stage1 = self._stage == 1
        epochs = self._stage1_epochs if in_stage1 else self._max_epochs - self._stage1_epochs
        self._optimizer_name = stage_optimizer(trainer, self._stage, self.stage1_lr if in_stage1 else self.stage2_lr,
                                               in_stage1 and self.solver == "adamw", epochs, self.warmup_ratio)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.solver == "lbfgs" and self._stage == 1 and not self._lbfgs:
            self._lbfgs = probe.solve_head(trainer, pl_module, self._parts(pl_module)[1], c_values=self.cs,
                                           max_iter=self.lbfgs_max_iter, label_key=self.label_key,
                                           forward=self.forward_fn)

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stage == 1 and trainer.current_epoch >= self._stage1_epochs:
            self._switch(trainer, pl_module)

    # ---- the switch -----------------------------------------------------------------------------------
    def _switch(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.keep_head_bias:
            seed = head_bias_seed(pl_module, self.head_bias_seed)
            self._head_bias_seed_used = int(trainer.strategy.broadcast(seed, src=0))  # one draw for every rank
            reinit_linear_biases(self._parts(pl_module)[1], self._head_bias_seed_used)
        self._head_sha = tensor_sha256(dict(self._parts(pl_module)[1].state_dict()))
        keep = set(self._pet) | (set(resolve(self.stage1_params, pl_module, "HeadWarmStart.stage1_params"))
                                 if self.stage1_params else set())
        keep = keep if self.reserve else set()
        # map tensors to their pretrained values by identity (dropping PET layers may rename the backbone's tensors),
        # else by name (a drop that rebuilds the backbone)
        table = {**dict(pl_module.named_parameters()), **dict(pl_module.named_buffers())}
        by_id = {id(table[n]): v for n, v in self._pretrained.items() if n in table and n not in keep}
        if self._can_drop(pl_module):
            self._drop_pet(pl_module)
        backbone = self._parts(pl_module)[0]
        restore_pretrained(backbone, submodule_prefix(pl_module, backbone), self._pretrained, by_id, keep,
                           self.reserve, self.drop_pet_fn)
        self._pretrained = {}
        set_trainable(pl_module, self._stage2_names(pl_module))
        rewrap_ddp(trainer)
        self._stage, self._switch_epoch = 2, trainer.current_epoch
        self._stage1_best = reset_callbacks(self._fresh_states or []) or self._stage1_best
        trainer.should_stop = False
        self._setup_stage_optimizer(trainer)

    # ---- the run record --------------------------------------------------------------------------------
    def record_extra(self) -> dict[str, Any]:
        """The stage plan, the head's source and the solver, for the run record (``petune fit`` collects it)."""
        return {"head_warm_start": record(self)}

