"""Name resolution, collections, registration rules and lazy listing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from benchmark.adapter import Adapter
from benchmark.registry import Registry, RegistryError, UnknownNameError, models, register_collection


def test_sanity_models_listed():
    names = models.names()
    for n in ("random", "uniform", "center_prior"):
        assert n in names
        assert "grounding" in models.entry(n).capabilities


def test_resolution_order_exact_collection_glob_all():
    assert models.resolve("random") == ["random"]
    assert models.resolve("sanity") == ["center_prior", "random", "uniform"]
    assert models.resolve("cent*") == ["center_prior"]
    assert set(models.resolve("all")) >= {"random", "uniform", "center_prior"}
    # comma lists keep order and drop duplicates
    assert models.resolve("uniform,random,sanity") == ["uniform", "random", "center_prior"]
    assert models.resolve(["uniform", "uniform"]) == ["uniform"]


def test_exact_name_wins_over_collection_and_glob():
    reg = Registry("metrics")
    reg.add("x_one", object(), description="one")
    reg.add("x_two", object(), description="two")
    assert reg.resolve("x_*") == ["x_one", "x_two"]
    assert reg.resolve("x_two") == ["x_two"]


def test_unknown_name_suggests_and_fails():
    with pytest.raises(UnknownNameError) as exc:
        models.resolve("randon")
    assert "random" in str(exc.value)
    assert "did you mean" in str(exc.value)
    with pytest.raises(UnknownNameError):
        models.resolve("nomatch*")


def test_hidden_entries_are_not_in_all():
    class _Hidden(Adapter):
        preprocessing_id = "none"

    models.add("hidden_test_model", _Hidden, tags=("hidden",), capabilities=("grounding",))
    try:
        assert "hidden_test_model" not in models.resolve("all")
        assert models.resolve("hidden_test_model") == ["hidden_test_model"]
    finally:
        models.unregister("hidden_test_model")


def test_tag_collection_and_fixed_collection():
    register_collection("models", "fixed_test_coll", "test", members=["uniform", "random"])
    assert models.resolve("fixed_test_coll") == ["uniform", "random"]


def test_duplicate_registration_of_a_different_object_fails():
    models.add("dup_test_model", "pkg.a:A")
    try:
        models.add("dup_test_model", "pkg.a:A")  # the same manifest read twice is fine
        with pytest.raises(RegistryError, match="registered twice"):
            models.add("dup_test_model", "pkg.b:B")
    finally:
        models.unregister("dup_test_model")


def test_a_class_that_disagrees_with_its_manifest_entry_is_refused_at_first_use():
    class NoPrep(Adapter):
        pass

    class Cls(Adapter):
        preprocessing_id = "cls"

    for name, obj, caps, fields, match in (
            ("no_prep_model", NoPrep, ("grounding",), {}, "sets no preprocessing_id"),
            ("wrong_caps_model", Cls, ("grounding", "zeroshot_cls"), {}, "capabilities"),
            ("wrong_ckpt_model", Cls, ("grounding",), {"needs_checkpoint": True}, "needs_checkpoint"),
            ("not_an_adapter", object, ("grounding",), {}, "not an Adapter subclass")):
        models.add(name, obj, capabilities=caps, **fields)
        try:
            with pytest.raises(RegistryError, match=match):
                models.get(name)
        finally:
            models.unregister(name)


def test_an_unimportable_object_is_one_line_naming_the_entry():
    models.add("ghost_model", "no_such_package.adapter:Ghost", capabilities=("grounding",), source="x/manifest.yaml")
    try:
        with pytest.raises(RegistryError, match=r"model 'ghost_model' \(x/manifest.yaml\): cannot import "
                                                r"'no_such_package.adapter:Ghost': ModuleNotFoundError"):
            models.get("ghost_model")
    finally:
        models.unregister("ghost_model")


def test_every_manifest_entry_imports_and_agrees_with_its_object():
    """The manifests are read without importing anything; here every entry is imported once and
    checked (capabilities, needs_checkpoint, card tasks, protocol names), so no entry can drift."""
    from benchmark.registry import REGISTRIES

    n = 0
    for reg in REGISTRIES.values():
        for e in reg.entries():
            assert e.load() is not None, e.name
            n += 1
    assert n == sum(len(r.names()) for r in REGISTRIES.values()) >= 55


@pytest.mark.parametrize("bad", ["has space", "a,b", "glob*", "all", "sanity"])
def test_invalid_names_rejected(bad):
    with pytest.raises(ValueError):
        Registry("models").add(bad, object())


def test_listing_does_not_import_torch():
    code = ("import sys; from benchmark.cli.main import main; "
            "rc = [main(['ls', k]) for k in ('models', 'datasets', 'metrics', 'protocols', 'collections')]; "
            "print('TORCH', 'torch' in sys.modules, 'TRANSFORMERS', 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "TORCH False TRANSFORMERS False" in out.stdout


def test_flag_option_reads_command_line_words_and_rejects_others():
    from benchmark.adapter import flag_option

    for word in ("true", "1", "Yes", " on ", "y", "T"):
        assert flag_option({"k": word}, "k") is True
    for word in ("false", "0", "No", "off", "n", "", "F"):
        assert flag_option({"k": word}, "k") is False
    assert flag_option({}, "k") is False and flag_option({}, "k", True) is True
    assert flag_option({"k": False}, "k", True) is False
    with pytest.raises(ValueError, match=r"cam_relu='maybe'.*true or false"):
        flag_option({"cam_relu": "maybe"}, "cam_relu", True)


def test_every_yes_no_model_option_is_strict():
    """The saliency, CLIP-family and checkpoint-backed adapters read yes/no options one way: an
    unknown word is an error (it used to read as True for the saliency models)."""
    from benchmark.adapter import build_adapter

    for name in ("gradcam:densenet121", "gloria"):
        a = build_adapter(name)
        a.options.update(random_init="sure")
        with pytest.raises(ValueError, match="random_init='sure'"):
            a.load(None, "cpu")
