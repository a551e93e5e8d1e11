"""What pyproject.toml pins for speed, checked as installed (the figures: BENCHMARKS.md,
issue 19's section). A failure means an install without the pin: slower, not wrong."""

from importlib.metadata import version


def test_dvc_parses_yaml_with_ruamel_c_loader() -> None:
    from ruamel.yaml import YAML, main

    assert main.CParser is not None, "ruamel.yaml.clib is not installed (pyproject.toml)"
    assert YAML(typ="safe").Parser is main.CParser  # what DVC's parse_yaml uses


def test_ml_dtypes_is_not_the_release_that_loads_in_a_second() -> None:
    installed = version("ml_dtypes")
    major_minor = tuple(int(part) for part in installed.split(".")[:2])
    assert major_minor < (0, 7), f"ml_dtypes {installed}: pyproject.toml pins <0.7"
