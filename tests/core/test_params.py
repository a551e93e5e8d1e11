from pathlib import Path

import pytest
import yaml

from pipeline.core.params import ParamsError, load_params, parse_params

ROOT = Path(__file__).resolve().parents[2]


def raw_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_project_params_are_the_reference_recipe():
    p = load_params(ROOT / "params.yaml")
    assert (p.train.optimizer, p.train.learning_rate, p.train.batch_size, p.train.epochs) == (
        "sgd",
        0.01,
        128,
        30,
    )
    assert (p.model.activation, p.model.pooling, p.model.padding) == ("tanh", "max", 2)
    assert p.train.precision == "float32"
    assert p.preprocess.val_size == 5000
    assert len(p.download.mirrors) >= 2
    assert all(m.startswith("https://") or m.startswith("http://") for m in p.download.mirrors)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "learnig_rate", 0.1, "train.learnig_rate: unknown key"),
        ("train", "batch_size", "128", "train.batch_size: expected an integer, got '128'"),
        ("train", "batch_size", 12.5, "train.batch_size: expected an integer"),
        ("train", "epochs", True, "train.epochs: expected an integer, got True"),
        ("train", "learning_rate", -0.1, "train.learning_rate: must be > 0"),
        ("train", "optimizer", "adamx", "train.optimizer: expected one of 'sgd'"),
        ("train", "max_samples", 0, "train.max_samples: must be >= 1"),
        ("train", "precision", "bfloat16", "train.precision: expected one of 'float32', 'mixed"),
        ("train", "nesterov", "yes", "train.nesterov: expected true/false"),
        ("model", "activation", "sigmoid", "model.activation: expected one of 'tanh', 'relu'"),
        ("model", "padding", 1, "model.padding: expected one of 0, 2"),
        ("preprocess", "val_size", -5, "preprocess.val_size: must be >= 1, got -5"),
        ("download", "mirrors", [], "download.mirrors: needs at least one mirror"),
        ("download", "mirrors", "http://x/", "download.mirrors: expected a list of a string"),
        ("download", "timeout_s", 0, "download.timeout_s: must be > 0"),
        ("register", "alpha", 0, "register.alpha: must be > 0, got 0"),
        ("register", "alpha", 2, "register.alpha: must be <= 0.5, got 2"),
        ("register", "alpha", "5%", "register.alpha: expected a number, got '5%'"),
        ("register", "alhpa", 0.05, "register.alhpa: unknown key"),
        ("register", "min_gain", -1, "register.min_gain: must be >= 0, got -1"),
        ("register", "alias", "challenger", "register.alias: 'challenger' is the alias"),
    ],
)
def test_bad_values_name_the_key(section, key, value, message):
    raw = raw_params()
    raw[section][key] = value
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ({"n_trail": 5}, "tune.n_trail: unknown key"),
        ({"pruner": "asha"}, "tune.pruner: expected one of 'median', 'hyperband', 'none'"),
        ({"n_trials": 0}, "tune.n_trials: must be >= 1"),
        ({"study": "my sweep"}, "tune.study: letters, digits"),
        (
            {"space": {"train.learning_rate": {"low": 0.1, "high": 0.01}}},
            "tune.space.train.learning_rate: low (0.1) > high (0.01)",
        ),
        ({"space": {"train.lr": {"low": 0.1, "high": 1}}}, "tune.space.train.lr: not a train"),
        ({"space": {"evaluate.misclassified_shown": {"choices": [1]}}}, "not a train or model"),
        (
            {"space": {"train.batch_size": {"choices": [64, "128"]}}},
            "tune.space.train.batch_size.choices[1]: expected an integer, got '128'",
        ),
        (
            {"space": {"model.activation": {"choices": ["relu", "gelu"]}}},
            "tune.space.model.activation.choices[1]: expected one of 'tanh', 'relu'",
        ),
        (
            {"space": {"train.batch_size": {"low": 32.5, "high": 256}}},
            "tune.space.train.batch_size.low: expected an integer",
        ),
        (
            {"space": {"train.learning_rate": {"low": 0, "high": 0.1}}},
            "tune.space.train.learning_rate.low: must be > 0",
        ),
        ({"space": {"train.optimizer": {"low": 1, "high": 2}}}, "has no range; use choices"),
        ({"space": {"train.epochs": {"low": 1, "high": 9}}}, "set by tune.epochs"),
        ({"space": {"train.seed": {"low": 1, "high": 9, "step": 2}}}, "seed.step: unknown key"),
    ],
)
def test_bad_tune_sections_name_the_key(tune, message):
    raw = raw_params()
    raw["tune"].update(tune)
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_int_is_accepted_for_float_and_null_for_optional():
    raw = raw_params()
    raw["train"]["learning_rate"] = 1
    raw["train"]["max_samples"] = None
    p = parse_params(raw)
    assert p.train.learning_rate == 1.0 and isinstance(p.train.learning_rate, float)
    assert p.train.max_samples is None


def test_unknown_section_and_missing_keys():
    raw = raw_params()
    raw["trian"] = {}
    with pytest.raises(ParamsError, match="trian: unknown section"):
        parse_params(raw)
    # params.yaml is the one source of every value: nothing missing is filled in.
    minimal = {"download": {"mirrors": ["http://127.0.0.1:1/"]}}
    with pytest.raises(ParamsError, match="^preprocess: required section is missing$"):
        parse_params(minimal)
    for section in raw_params():
        raw = raw_params()
        del raw[section]
        with pytest.raises(ParamsError, match=f"^{section}: required section is missing$"):
            parse_params(raw)
    raw = raw_params()
    del raw["train"]["epochs"]
    with pytest.raises(ParamsError, match=r"^train\.epochs: required key is missing$"):
        parse_params(raw)
    raw = raw_params()
    del raw["tune"]["n_trials"]
    with pytest.raises(ParamsError, match=r"^tune\.n_trials: required key is missing$"):
        parse_params(raw)


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("train:\n  epochs: [1,\n")
    with pytest.raises(ParamsError, match=r"params.yaml is not valid YAML at line \d+"):
        load_params(bad)


def test_flat_keys_cover_every_param():
    flat = load_params(ROOT / "params.yaml").flat()
    assert flat["train.learning_rate"] == 0.01
    assert flat["download.mirrors"][0].startswith("https://")
    assert len(flat) == sum(len(v) for v in raw_params().values())


def test_exponent_floats_as_dvc_writes_them_are_numbers():
    """`dvc exp run -S register.alpha=1e-12` writes `alpha: 1e-12`: YAML 1.2's float, a
    string to PyYAML's YAML 1.1."""
    raw = raw_params()
    raw["register"]["alpha"] = "1e-12"
    raw["train"]["learning_rate"] = "5E-4"
    p = parse_params(raw)
    assert p.register.alpha == 1e-12 and p.train.learning_rate == 5e-4
    raw["train"]["batch_size"] = "1e2"  # not an integer field
    with pytest.raises(ParamsError, match="train.batch_size: expected an integer"):
        parse_params(raw)


def test_with_values_sets_flat_keys_checked_like_params_yaml():
    p = parse_params(raw_params())
    q = p.with_values({"train.epochs": 3, "model.activation": "relu", "train.lr_decay_epochs": 5})
    assert (q.train.epochs, q.model.activation, q.train.lr_decay_epochs) == (3, "relu", 5.0)
    assert p.train.epochs == 30 and q.download == p.download  # the rest as it was
    with pytest.raises(ParamsError, match="train.epochs: must be >= 1"):
        p.with_values({"train.epochs": 0})
    with pytest.raises(ParamsError, match="train.epochz: unknown key"):
        p.with_values({"train.epochz": 3})
    with pytest.raises(ParamsError, match="augmentation"):  # cross-field checks too
        p.with_values({"train.loop": "fit", "train.augment_shift": 2})
