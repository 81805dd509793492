"""PEFT configs as plain data: the spec a recipe gives, checked and normalised before any backbone loads.

A tuner's config reaches :class:`~pl_petune.methods.Peft` as PEFT's own config: a dict of its arguments (PEFT's
``adapter_config.json`` form), ``{class_path: peft.<X>Config, init_args: {...}}``, or a config object.
:func:`peft_spec` turns any of them into ``{"peft_type": ..., <arguments that differ from PEFT's defaults>}``
(what checkpoints and run records hold), refusing in one line what PEFT or the bridge would refuse later;
:func:`build_config` makes a fresh PEFT config object from it.

A preset (``dora``, ``vera``, ...) is a registered subclass of ``Peft`` whose class attribute ``tuner`` is a
:class:`Tuner`: the config class and the fields that make it this tuner. :data:`TUNERS` reads them from the
method registry, so the registration is the one place a preset is declared.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Union

from pl_petune.errors import ConfigError
from pl_petune.methods.registry import METHODS, registered_name

ADAPTER = "default"  # PEFT's adapter name: export and PeftModel.from_pretrained load it without a subfolder
# Every parameter PEFT adds lives under its adapter name (lora_A.default.weight, vera_lambda_b.default,
# ln_tuning_layers.default.weight, prompt_encoder.default.embedding.weight, modules_to_save.default.*).
ADDED = r"\." + ADAPTER + r"(?:\.|$)"
# Config fields the bridge owns: the task type (our head reads features), and training mode.
RESERVED = ("task_type", "inference_mode", "base_model_name_or_path", "revision", "peft_version", "auto_mapping")


class NeedsWeights(ConfigError):
    """The tuner's init reads the weights (SVD, permutations), so it cannot be built on the meta device."""


@dataclass(frozen=True)
class Tuner:
    """What makes a preset this tuner: a PEFT config class and its defining fields.

    Args:
        config: PEFT config class name (``peft.<config>``).
        fixed: fields that define the tuner, with their allowed values (another value is another tuner).
        defaults: the preset's defaults where PEFT's do not fit (the user may override them).
        targets: ``target_modules`` per model type (names, or one regex), used only where PEFT has no default
            mapping.
        name: the preset's registry name; :data:`TUNERS` and :func:`preset_of` fill it in.
        class_name: the preset's class, ``pl_petune.methods.<class_name>``; filled in likewise.
    """

    config: str
    fixed: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    targets: Mapping[str, Union[list[str], str]] = field(default_factory=dict)
    name: str = ""
    class_name: str = ""


def preset_of(cls: type) -> Optional[Tuner]:
    """The tuner of ``cls``'s nearest class that declares one (its own ``tuner`` attribute), named after that
    class's registration; ``None`` for the generic bridge."""
    for klass in cls.__mro__:
        spec = vars(klass).get("tuner")
        if isinstance(spec, Tuner):
            return dataclasses.replace(spec, name=registered_name(klass) or klass.__name__,
                                       class_name=klass.__name__)
    return None


class _Tuners(Mapping[str, Tuner]):
    """Every registered preset's :class:`Tuner` by method name, read from the registry at each access (a preset
    registered later, by a plugin, is seen too)."""

    def _live(self) -> dict[str, Tuner]:
        out = {}
        for name, cls in METHODS.items():
            spec = vars(cls).get("tuner")
            if isinstance(spec, Tuner):
                out[name] = dataclasses.replace(spec, name=name, class_name=cls.__name__)
        return out

    def __getitem__(self, name: str) -> Tuner:
        return self._live()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())


TUNERS: Mapping[str, Tuner] = _Tuners()


def _config_class(name: str) -> type:
    import peft

    cls = getattr(peft, name, None)
    if not (isinstance(cls, type) and issubclass(cls, peft.PeftConfig)):
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        known = sorted({c.__name__ for c in PEFT_TYPE_TO_CONFIG_MAPPING.values()})
        hint = (" (DoRA and rsLoRA are LoraConfig fields: use_dora, use_rslora)"
                if name.lower().startswith(("dora", "rslora")) else "")
        raise ConfigError(f"peft.{name} is not a PEFT config class in peft {peft.__version__}{hint}; known: "
                          f"{', '.join(known)}")
    return cls


def _config_class_for(peft_type: str) -> type:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    by_name = {str(getattr(k, "value", k)).upper(): v for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items()}
    key = str(peft_type).upper()
    if key not in by_name:
        raise ConfigError(f"unknown peft_type {peft_type!r}; known: {', '.join(sorted(by_name))}")
    return by_name[key]


def _plain(value: Any) -> Any:
    """YAML/JSON-able data (sets sorted, dataclasses and namespaces as dicts, enums as values)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "value") and type(value).__module__.startswith("peft"):
        return value.value
    if type(value).__name__ == "Namespace":
        return _plain(vars(value))
    return value


def _field_defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _peft_type(cls: type) -> str:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    for k, v in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        if v is cls:
            return str(getattr(k, "value", k))
    raise ConfigError(f"{cls.__name__} is not registered with PEFT (no peft_type)")


def peft_spec(value: Any, tuner: Optional[Tuner] = None) -> dict[str, Any]:
    """The tuner's config as plain data: ``{"peft_type": ..., <arguments that differ from PEFT's defaults>}``.

    Args:
        value: ``None`` (the tuner's defaults), a PEFT config object, a dict of its arguments (with or without
            ``peft_type``), or ``{"class_path": "peft.<X>Config", "init_args": {...}}``.
        tuner: the preset, whose config class and fixed fields ``value`` must agree with; ``None``: the generic
            bridge (the config names its class).

    Raises:
        ConfigError: an unknown config class or argument, a field the bridge sets itself, a value PEFT refuses,
            a preset's defining field changed, or (generic bridge) a config that has a preset.
    """
    if value is None:
        value = {}
    if isinstance(value, dict) and "class_path" in value:
        cls = _config_class(str(value["class_path"]).rpartition(".")[2])
        # A dotted override (--model.init_args.peft.r 8, or .peft.init_args.r 8: jsonargparse writes both beside
        # class_path) is one of the config's arguments and wins over init_args, as the later value.
        beside = {k: v for k, v in value.items() if k not in ("class_path", "init_args")}
        given = _plain({**dict(value.get("init_args") or {}), **beside})
        args = _non_default(cls, given)
    elif isinstance(value, dict):
        args = dict(value)
        given = dict(args)
        ptype = args.pop("peft_type", None)
        if ptype is not None:
            cls = _config_class_for(ptype)
        elif tuner is not None:
            cls = _config_class(tuner.config)
        else:
            raise ConfigError("peft: name the tuner, e.g. {peft_type: LORA, r: 8} or {class_path: peft.LoraConfig, "
                              "init_args: {r: 8}}, or use a preset (pl_petune.methods.DoRA, VeRA, ...)")
    elif dataclasses.is_dataclass(value):
        cls = type(value)
        given = _plain(value)  # every field: an object states each one, its defaults included
        args = _non_default(cls, given)
    else:
        raise ConfigError(f"peft must be a PEFT config, a dict of its arguments or class_path/init_args; "
                          f"got {type(value).__name__}")
    args.pop("peft_type", None)
    ptype = _peft_type(cls)
    if args.get("inference_mode"):
        raise ConfigError("peft.inference_mode true would freeze the adapter (nothing would train); the bridge sets "
                          "it: leave it out")
    fields = {f.name for f in dataclasses.fields(cls)} - {"peft_type", *RESERVED}
    unknown = sorted(set(args) - fields - set(RESERVED))
    if unknown:
        raise ConfigError(f"peft: unknown argument(s) {unknown} of peft.{cls.__name__}; allowed: "
                          f"{', '.join(sorted(fields))}")
    if args.get("task_type") not in (None, "FEATURE_EXTRACTION"):
        raise ConfigError(f"peft.task_type {args['task_type']!r}: the bridge sets FEATURE_EXTRACTION (pl_petune's "
                          "head reads the backbone's features); leave task_type out")
    args.pop("task_type", None)
    args = {k: v for k, v in args.items() if k not in RESERVED}
    if tuner is not None:
        if cls is not _config_class(tuner.config):
            raise ConfigError(f"method {tuner.name!r} is peft.{tuner.config}; got peft.{cls.__name__} "
                              f"(use pl_petune.methods.Peft for another tuner)")
        field_defaults = _field_defaults(cls)
        defining = {k: v[0] for k, v in tuner.fixed.items() if field_defaults.get(k) not in v}
        # The preset fills in its defining fields and defaults; a value the user stated wins, even one equal to
        # PEFT's default that ``_non_default`` left out of ``args`` (use_dora: false on the DoRA preset must be
        # refused, C3A's block_size: 256 must not become the preset's 16).
        stated = {k: given[k] for k in (*tuner.fixed, *tuner.defaults) if k in given}
        args = {**defining, **tuner.defaults, **args, **stated}
        for key, allowed in tuner.fixed.items():
            got = args.get(key, field_defaults.get(key))
            if got not in allowed:
                raise ConfigError(f"method {tuner.name!r}: peft.{key}={got!r} would be another tuner; allowed: "
                                  f"{', '.join(map(repr, allowed))} (see petune params --all)")
    else:
        preset = _preset_for(cls, args)
        if preset is not None:
            raise ConfigError(f"peft.{cls.__name__} with these arguments is method {preset.name!r}: use class_path "
                              f"pl_petune.methods.{preset.class_name}, so its runs are recorded under its own name")
    spec = {"peft_type": ptype, **_plain(args)}
    build_config(spec)  # PEFT's own checks now, before any backbone loads
    return spec


def _non_default(cls: type, args: dict[str, Any]) -> dict[str, Any]:
    """The arguments that differ from the config class's defaults (a parsed or built config lists them all)."""
    defaults = _field_defaults(cls)
    out = {k: v for k, v in args.items() if k not in defaults or defaults[k] != v}
    out = {k: v for k, v in out.items() if not (k == "task_type" and v is None)}
    if "loftq_config" in out and out.get("init_lora_weights") != "loftq":
        out.pop("loftq_config")  # jsonargparse fills LoftQConfig's defaults; PEFT ignores it unless loftq
    return out


def _preset_for(cls: type, args: dict[str, Any]) -> Optional[Tuner]:
    defaults = _field_defaults(cls)
    for tuner in TUNERS.values():
        if _config_class(tuner.config) is cls and all(
                args.get(k, defaults.get(k)) in allowed for k, allowed in tuner.fixed.items()):
            return tuner
    return None


def build_config(spec: dict[str, Any]):
    """A fresh PEFT config object from :func:`peft_spec`'s plain data (task type ``FEATURE_EXTRACTION``).

    Raises:
        ConfigError: PEFT refuses a value (its message, one line).
    """
    args = dict(spec)
    cls = _config_class_for(args.pop("peft_type"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(task_type="FEATURE_EXTRACTION", **args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"peft.{cls.__name__}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") \
            from None
