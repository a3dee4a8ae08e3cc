"""params.yaml loading and validation (pipeline/params.py): YAML 1.2 floats and one-line errors."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO, repo_params

from pipeline.errors import DmcError
from pipeline.params import load_params, parse, validate


def test_repo_params_yaml_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params["dataset"] == "bach" and params["seq_len"] % 8 == 0


@pytest.mark.parametrize("text", ["lr: 1e-6", "lr: 1e-06", "lr: 1.0e-6", "lr: -2E+3", "lr: .5"])
def test_scientific_notation_without_a_dot_is_a_float(text):
    assert isinstance(parse(text)["lr"], float)


def test_dvc_set_override_1e_minus_6_validates(tmp_path):
    # `dvc exp run -S lr=1e-6` writes the value exactly so: no dot, which YAML 1.1 reads as a string.
    text = re.sub(r"(?m)^lr:.*$", "lr: 1e-06", (REPO / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml")["lr"] == 1e-6


def _with(key: str, value) -> dict:
    params = repo_params()
    *path, last = key.split(".")
    node = params
    for part in path:
        node = node[part]
    node[last] = value
    return params


@pytest.mark.parametrize(("key", "value"), [
    ("seq_len", 0), ("seq_len", -8), ("seq_len", 100), ("seq_len", "128"), ("seq_len", True),
    ("dataset", "mozart"), ("prepare.max_duration", 0.0), ("prepare.threshold_policy", "drop"),
    ("prepare.programs", [0, 200]), ("prepare.programs", []), ("prepare.n_jobs", -1),
    ("prepare.split.train", 1.5), ("lr", float("nan")), ("instruments", []), ("train.voices", "columns"),
])
def test_an_invalid_value_is_one_line_naming_the_key(key, value):
    with pytest.raises(DmcError) as err:
        validate(_with(key, value))
    message = str(err.value)
    assert f"'{key}'" in message and "\n" not in message


@pytest.mark.parametrize("grid", ["1/7", "1/1024", "sixteenth", "0", "-1/4", "1/0"])
def test_a_bad_quantize_grid_names_the_params_key_not_the_cli_flag(grid):
    with pytest.raises(DmcError) as err:
        validate(_with("sample.quantize", grid))
    assert "'sample.quantize'" in str(err.value) and "--quantize" not in str(err.value)


@pytest.mark.parametrize(("key", "value"), [("sample.quantize", "auto"), ("sample.sampler", "dpm++"),
                                            ("sample.guard", "clip"), ("diffusion.prediction", "v"),
                                            ("diffusion.schedule", "cosine"), ("features", "original"),
                                            ("train.voices", "rows")])
def test_the_quality_levers_accept_their_documented_values(key, value):
    validate(_with(key, value))


def test_the_params_grid_check_agrees_with_sampling_parse_quantize():
    from pipeline import params
    from pipeline.compose import decode, options

    assert params.SAMPLE_TICKS_PER_QUARTER == decode.TICKS_PER_QUARTER
    for grid in ["", " ", "1/16", "1/12", "3/8", "1", "1/7", "1/1024", "x", "0", "-1/4", "1/0", " 1/8 "]:
        try:
            options.parse_quantize(grid)
            accepted = True
        except DmcError:
            accepted = False
        assert (params._grid(grid) is None) == accepted, grid


def test_split_fractions_must_sum_to_one():
    with pytest.raises(DmcError, match="'prepare.split' fractions must sum to 1"):
        validate(_with("prepare.split.val", 0.3))


def test_unknown_and_missing_keys_are_named():
    params = repo_params()
    params["prepare"]["hopp"] = 4
    with pytest.raises(DmcError, match="unknown key 'prepare.hopp'"):
        validate(params)
    params = repo_params()
    del params["prepare"]["hop"]
    with pytest.raises(DmcError, match="missing key 'prepare.hop'"):
        validate(params)


@pytest.mark.parametrize("section", ["train", "prepare.split"])
def test_an_empty_section_is_named_as_empty_not_as_unknown(section):
    params = repo_params()
    *parents, leaf = section.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[leaf] = None  # `train:` with nothing under it
    with pytest.raises(DmcError, match=rf"^params: section '{section}' is empty; give its keys"):
        validate(params)


def test_a_missing_or_broken_file_is_a_dmc_error(tmp_path):
    with pytest.raises(DmcError, match="no such file"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("seq_len: [1, 2\n")
    with pytest.raises(DmcError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(DmcError, match="mapping"):
        load_params(tmp_path / "list.yaml")


def test_a_softmax_head_is_refused_where_it_has_nothing_to_predict_over():
    params = repo_params()
    params["diffusion"]["prediction"] = "softmax"
    assert validate(params)["diffusion"]["prediction"] == "softmax"  # the default lattice code
    for change, message in ((("features", "original"), "predicts over a lattice code's classes"),
                            (("diffusion", {**params["diffusion"], "loss_weight": "min_snr"}),
                             "'diffusion.loss_weight' must be none with prediction softmax")):
        bad = {**params, change[0]: change[1]}
        with pytest.raises(DmcError, match=message):
            validate(bad)
    # A grid cell's pitch, sounding and onset are categorical whatever features says.
    assert validate({**params, "features": "original", "layout": "grid"})["layout"] == "grid"


def test_a_hybrid_objective_needs_one_hot_classes():
    params = repo_params()
    params["diffusion"]["prediction"] = "hybrid"
    with pytest.raises(DmcError, match="hybrid predicts x_0 for one-hot classes"):
        validate(params)  # the default's times are on the grid, not in classes
    params["features"] = {**params["features"], "time": "classes"}
    assert validate(params)["diffusion"]["prediction"] == "hybrid"
    with pytest.raises(DmcError, match="'diffusion.loss_weight' must be none with prediction hybrid"):
        validate({**params, "diffusion": {**params["diffusion"], "loss_weight": "min_snr"}})


def test_inpainting_is_the_grid_layouts_own():
    params = repo_params()
    inpainting = {**params["diffusion"], "inpainting": True}
    assert validate({**params, "layout": "grid", "diffusion": inpainting})["diffusion"]["inpainting"]
    with pytest.raises(DmcError, match="'diffusion.inpainting' trains on the grid layout"):
        validate({**params, "diffusion": inpainting})


def test_params_name_the_same_levers_as_the_model_code():
    from pipeline import params
    from pipeline.model import diffusion, unet, voice_training

    assert sorted(params.PRESETS) == sorted(unet.PRESETS)
    assert tuple(diffusion.SCHEDULES) == params.SCHEDULES
    assert tuple(diffusion.PREDICTIONS) == params.PREDICTIONS
    assert tuple(diffusion.LOSS_WEIGHTS) == params.LOSS_WEIGHTS
    assert tuple(diffusion.SAMPLERS) == params.SAMPLERS
    assert tuple(diffusion.GUARDS) == params.GUARDS
    assert voice_training.VOICES_AS == params.VOICES_AS


def test_both_layouts_transpose_whatever_the_note_features():
    params = repo_params()
    params["train"]["transpose"] = 6
    assert validate(params)["train"]["transpose"] == 6
    assert validate({**params, "layout": "grid"})["train"]["transpose"] == 6
