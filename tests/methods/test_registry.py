"""The method registry: validated names, one class per name, added-parameter patterns from the registration."""

from __future__ import annotations

import pytest

import pl_petune.methods as methods
from pl_petune.methods import METHODS, PetuneModule, register_method
from pl_petune.methods.registry import RegistrationError, added_patterns, registered_name, unregister_method


@pytest.fixture
def scratch():
    """Names registered inside a test are removed afterwards."""
    before = set(METHODS)
    yield
    for name in set(METHODS) - before:
        unregister_method(name)


@pytest.mark.parametrize("bad", ["LoRA", "Lora", "2lora", "lo-ra", "", "lora ", "_lora", "lóra"])
def test_names_must_be_lowercase_identifiers(bad, scratch):
    with pytest.raises(RegistrationError, match="lowercase"):
        register_method(bad)


def test_a_taken_name_is_refused_for_another_class(scratch):
    class MyLoRA(PetuneModule):
        pass

    with pytest.raises(RegistrationError, match=r"'lora' is already registered to pl_petune\.methods\.pet\.LoRA"):
        register_method("lora")(MyLoRA)
    assert METHODS["lora"] is methods.LoRA


def test_one_class_gets_one_name(scratch):
    with pytest.raises(RegistrationError, match="already registered as 'lora'"):
        register_method("lora_again")(methods.LoRA)
    assert "lora_again" not in METHODS


def test_registering_a_non_module_is_refused(scratch):
    with pytest.raises(RegistrationError, match="not a LightningModule"):
        register_method("thing")(dict)


def test_a_pattern_that_does_not_compile_is_refused(scratch):
    with pytest.raises(RegistrationError, match="does not compile"):
        register_method("broken", added=r"(unclosed")


def test_every_registered_class_is_a_class_path_of_pl_petune_methods():
    for name, cls in METHODS.items():
        assert getattr(methods, cls.__name__) is cls
        assert cls.method_name == name
        assert cls.__name__ in methods.__all__


def test_an_unregistered_subclass_is_not_recorded_as_its_parent(scratch):
    """A user's variant of LoRA must not be filed under 'lora' (its runs would mix into LoRA's statistics)."""

    class TweakedLoRA(methods.LoRA):
        pass

    assert TweakedLoRA.method_name == "TweakedLoRA"
    assert methods.LoRA.method_name == "lora"
    assert added_patterns(TweakedLoRA) == added_patterns(methods.LoRA)  # its parameters are still LoRA's
    register_method("tweaked_lora")(TweakedLoRA)
    assert TweakedLoRA.method_name == "tweaked_lora" and METHODS["tweaked_lora"] is TweakedLoRA


def test_cli_records_an_unregistered_subclass_under_its_class_name(scratch):
    from pl_petune.identity import method_name as _method_name

    assert _method_name("pl_petune.methods.LoRA") == "lora"
    assert _method_name("pl_petune.methods.PetLayerMethod") == "PetLayerMethod"


def test_is_added_follows_the_registration(tiny_bert, scratch):
    """Accounting reads the registry: a method registered with no added pattern reports nothing added even when a
    parameter name contains 'adapter' or 'prompt' (the old substring list counted those as added)."""

    class Renamed(PetuneModule):
        def configure_method(self) -> None:
            import torch

            self.backbone.prompt_bias = torch.nn.Parameter(torch.zeros(3))

    register_method("renamed")(Renamed)
    model = Renamed(task="cb", backbone=tiny_bert)
    assert not model._is_added("backbone.prompt_bias")
    assert model.parameter_report()["added_params"] == 0

    class Marked(Renamed):
        pass

    register_method("marked", added=r"^backbone\.prompt_bias$")(Marked)
    marked = Marked(task="cb", backbone=tiny_bert)
    assert marked._is_added("backbone.prompt_bias")
    assert marked.parameter_report()["added_params"] == 3


def test_registered_name_is_not_inherited():
    assert registered_name(methods.LoRA) == "lora"
    assert registered_name(methods.PetLayerMethod) is None
