"""The public surface: what imports, what is exported."""

import importlib

import pytest

import jrelu6


def test_version_is_a_string():
    assert isinstance(jrelu6.__version__, str) and jrelu6.__version__.count(".") >= 1


@pytest.mark.parametrize("module", ["jrelu6", "jrelu6.linen", "jrelu6.nnx"])
def test_all_names_exist_and_private_modules_stay_private(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), name
        assert not name.startswith("_")


def test_functions_are_exported():
    expected = {"relu6", "relu6_derivative", "relu6_inplace", "capped_relu",
                "hard_sigmoid", "hard_swish", "hard_silu", "fake_quant", "quantized_relu6",
                "quantized_hard_sigmoid", "quantized_hard_swish"}
    assert expected <= set(jrelu6.__all__)


def test_every_public_function_documents_its_args_with_an_example():
    for name in jrelu6.__all__:
        obj = getattr(jrelu6, name)
        if not callable(obj):
            continue
        doc = obj.__doc__ or ""
        assert "Args:" in doc and "Examples:" in doc, name


@pytest.mark.parametrize("module", ["jrelu6", "jrelu6.linen", "jrelu6.nnx"])
def test_all_is_sorted_and_names_every_public_callable(module):
    mod = importlib.import_module(module)
    assert list(mod.__all__) == sorted(mod.__all__)
    public = {name for name, obj in vars(mod).items()
              if callable(obj) and not name.startswith("_")}
    assert public == set(mod.__all__)
