"""params.yaml: valid as shipped; invalid files fail before any job starts, naming the key."""

from __future__ import annotations

import re

import pytest

from dsm.config import load_scale, validate_params
from dsm.errors import DsmError
from test_pipeline_util import REPO, copy_repo, edit_param, load_params, run, snakemake, tool

SCALES = ["smoke", "default", "paper", "fashion-mnist"]


def test_shipped_params_are_valid_and_complete():
    params = load_params(REPO)
    validate_params(params)
    assert set(SCALES) <= set(params["scales"])
    assert params["run"] is params["scales"][params["run"]["name"]]  # `run: *<scale>`, an alias
    for name in SCALES:
        cfg = load_scale(REPO / "params.yaml", name)
        assert cfg["name"] == name
    paper = params["scales"]["paper"]
    assert paper["data"]["source"] == "imagenet64" and paper["data"]["channels"] == 3
    assert paper["model"]["widths"] == [64, 128, 256] and paper["model"]["mid_width"] == 512
    assert (paper["train"]["steps"], paper["train"]["batch_size"], paper["train"]["lr"],
            paper["train"]["lr_halve_every"]) == (1_000_000, 128, 2e-4, 100_000)
    assert paper["resources"]["train"]["gpu"] >= 1 and paper["resources"]["evaluate"]["gpu"] >= 1
    assert params["scales"]["default"]["data"]["source"] == "field"
    fm = params["scales"]["fashion-mnist"]
    assert max(fm["split"]["N"]) == 29_000 and fm["data"]["n_holdout"] == 2000   # 2 x 29,000 + 2,000 = 60,000


def test_merge_keys_resolve_the_same_for_dvc():
    """DVC reads params.yaml with its own YAML loader: aliases and merge keys must agree."""
    import yte
    from dvc.utils.serialize import load_yaml

    ours = load_params(REPO)
    assert load_yaml(REPO / "params.yaml") == ours
    with open(REPO / "params.yaml") as f:  # Snakemake's config loader
        smk = yte.process_yaml(f, require_use_yte=True)
    assert smk == ours and smk["run"] is smk["scales"][smk["run"]["name"]]
    # merge keys: default inherits smoke's resources, paper default's fig1
    assert ours["scales"]["default"]["resources"] == ours["scales"]["smoke"]["resources"]
    assert ours["scales"]["paper"]["fig1"] == ours["scales"]["default"]["fig1"]


# (section, key, bad value, words the error must contain)
INVALID = [
    ("train", "lr", '"fast"', ["train.lr", "not of type"]),
    ("data", "source", "mnist", ["data.source", "mnist"]),
    ("split", "N", "[1, 10, 1000000]", ["split.N", "n_train"]),
    ("model", "embedding", "sinusoidal", ["model.embedding"]),
    ("train", "stepz", "10", ["train", "stepz"]),
]


@pytest.mark.parametrize("section,key,value,words", INVALID, ids=[f"{s}.{k}" for s, k, *_ in INVALID])
def test_invalid_params_fail_before_any_job(section, key, value, words, tmp_path):
    repo = copy_repo(tmp_path / "r")
    if key == "stepz":  # a typo: an unknown key
        p = repo / "params.yaml"
        text = p.read_text()
        i = text.index("  default: &default")
        j = text.index("      steps:", i)
        p.write_text(text[:j] + "      stepz: 10\n" + text[j:])
    else:
        edit_param(repo, "default", section, key, value)
    res = snakemake(["all", "--cores", "1"], repo, check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for w in words:
        assert w in out, out[-2000:]
    assert "scales.default" in out or "run." in out, out[-2000:]
    # nothing ran: no job was started, no output or log directory exists
    assert "Execute" not in out and "localrule" not in out
    for d in ("data", "models", "results", "logs", "figures"):
        assert not (repo / d).exists(), d
    # every dsm command rejects the same file (the first DVC stage fails the same way)
    res = run([tool("dsm"), "prepare", "--out", "x"], repo, check=False)
    assert res.returncode == 2 and all(w in res.stderr for w in words), res.stderr


def test_run_must_be_an_alias_of_a_scale(tmp_path):
    repo = copy_repo(tmp_path / "r")
    p = repo / "params.yaml"
    text = p.read_text()
    # a copy of the default scale with one value changed, instead of `run: *default`
    text = re.sub(r"(?m)^run: \*default$", "run:\n  <<: *default\n  device: cpu", text)
    p.write_text(text)
    res = snakemake(["all", "--dry-run"], repo, check=False)
    assert res.returncode != 0 and "run: differs from scales.default" in res.stdout + res.stderr


def test_unknown_scale_on_the_command_line(tmp_path):
    res = snakemake(["all", "--dry-run", "--config", "scale=huge"], REPO, check=False)
    assert res.returncode != 0 and "scale=huge" in res.stdout + res.stderr


def test_check_params_names_the_key():
    params = load_params(REPO)
    params["scales"]["smoke"]["data"]["image_size"] = 10  # not divisible by 2^2
    with pytest.raises(DsmError, match=r"scales\.smoke\.data\.image_size"):
        validate_params(params)
    params = load_params(REPO)
    params["scales"]["smoke"]["name"] = "other"
    with pytest.raises(DsmError, match=r"scales\.smoke\.name"):
        validate_params(params)


