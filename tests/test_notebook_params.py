"""The parameter check of the notebooks' setup cell: misspelt names and bad values are errors."""

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
