"""The parameter check of the notebooks' setup cell: misspelt names and bad values are errors."""

from pathlib import Path

import pytest

from ada_utils.book.notebook import ParameterError, check_parameters, parse_parameters_cell

CELL = '''# Parameters of this chapter (defaults = the CPU book; override with papermill -p NAME VALUE)
scale = "small"  # benchmark size [tiny|small|medium]
seed = 0  # training seed
lam = 1.0  # weight of the Infomax term
smoke = False  # tiny budgets for tests
encoders = ["random", "pretrained"]  # which encoders [random|pretrained|ada]
weights = None  # optional weight file
'''


def test_parse_defaults_and_choices():
    defaults, choices = parse_parameters_cell(CELL)
    assert defaults == {"scale": "small", "seed": 0, "lam": 1.0, "smoke": False,
                        "encoders": ["random", "pretrained"], "weights": None}
    assert choices == {"scale": ["tiny", "small", "medium"], "encoders": ["random", "pretrained", "ada"]}


def test_valid_overrides_merge():
    defaults, choices = parse_parameters_cell(CELL)
    out = check_parameters(defaults, {"scale": "tiny", "lam": 2, "weights": "w.pth"}, choices)
    assert out["scale"] == "tiny" and out["lam"] == 2 and out["seed"] == 0 and out["weights"] == "w.pth"


@pytest.mark.parametrize("injected, message", [
    ({"scael": "tiny"}, "unknown parameter 'scael'. Did you mean 'scale'?"),
    ({"seed": "zero"}, "parameter 'seed' = 'zero' is a str; expected int"),
    ({"smoke": 1}, "parameter 'smoke' = 1 is a int; expected bool"),
    ({"scale": "huge"}, "parameter 'scale' = 'huge' is not allowed"),
    ({"encoders": ["random", "dino"]}, "parameter 'encoders'"),
])
def test_bad_parameters_raise(injected, message):
    defaults, choices = parse_parameters_cell(CELL)
    with pytest.raises(ParameterError, match=message.replace("(", r"\(").replace("?", r"\?")):
        check_parameters(defaults, injected, choices)


def _declared(notebook: str) -> dict:
    import nbformat

    path = Path(__file__).parents[1] / "notebooks" / f"{notebook}.ipynb"
    cell = next(c for c in nbformat.read(path, as_version=4).cells if "parameters" in c.metadata.get("tags", []))
    return parse_parameters_cell(cell.source)


PARAMS = sorted((Path(__file__).parents[1] / "params").rglob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.relative_to(p.parents[1]).as_posix())
def test_every_params_file_key_is_a_parameter_of_its_notebook(path):
    """``params/**/<notebook>_*.yaml`` is for that notebook; ``params/smoke.yaml`` is for every notebook. Each key must
    be a declared parameter with a value of the right type and an allowed choice (what papermill would pass)."""
    import yaml

    values = yaml.safe_load(path.read_text())
    notebooks = sorted(p.stem for p in (Path(__file__).parents[1] / "notebooks").glob("*.ipynb"))
    targets = [n for n in notebooks if path.stem.startswith(n)] or (notebooks if path.stem == "smoke" else [])
    assert targets, f"{path.name}: name it after the notebook it is for (e.g. 03_train_<variant>.yaml)"
    for name in targets:
        defaults, choices = _declared(name)
        check_parameters(defaults, values, choices)  # raises ParameterError naming every bad key or value


def test_training_chapter_exposes_every_training_knob():
    import dataclasses

    from ada_utils.train import TrainConfig

    defaults, _ = _declared("03_train")
    missing = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in defaults]
    assert not missing, f"TrainConfig fields without a 03_train parameter: {missing}"
    assert all(defaults[f.name] == f.default for f in dataclasses.fields(TrainConfig)
               if f.name not in ("device",)), "03_train defaults differ from TrainConfig's"
