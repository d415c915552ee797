"""Bad input gets one line naming the file, key or value, exit 2, and nothing written.

* Parameters: NaN and infinities refused for every numeric key of the schema (the test
  walks workflow/schemas/params.schema.yaml), through `--set` and in params.yaml;
  ranges that depend on each other (t_low below the normalization's level, t_min below
  t_max, noise levels and PSNRs a model can take, [lo, hi] pairs); `--set train.lr=5e-4`
  is a number; a scale cannot be named `..`.
* Estimator options (`dsm logp --option`): non-finite, non-positive tolerances, wrong types.
* A user's images: a decompression bomb, a file name that is not UTF-8, an .npz member
  whose header claims 10^10 images or more bytes than it holds, a text file named .npy, a
  16-bit RGB PNG named .jpg.
* Model files with the right format tag but contents that do not fit (another version's,
  or edited): no model_cfg, a weight dropped or of another shape, absurd widths.
* `dsm gumbel` on values scipy cannot fit, and on samples whose bootstrap resamples have no
  spread; figure readers given swapped or invalid inputs; a normalization file that does
  not name its model; library warnings never print before the error line.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from dsm.cli import main
from dsm.config import SCHEMA_PATH, load_scale, validate_params
from dsm.errors import DsmError

REPO = Path(__file__).resolve().parent.parent
S = ["--params", str(REPO / "params.yaml"), "--scale", "smoke"]


def cli(capsys, *args) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


def one_line_error(err: str, cmd: str) -> str:
    """The error line, which must be the only line of stderr that is not a progress or
    information line of dsm itself: no traceback, no raw library warning before it."""
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"dsm {cmd}: error: "), repr(err)
    assert not any("Traceback" in line or "Warning" in line or line.startswith(" ") for line in lines), err
    return errors[0]


def listing(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else "dir"
            for p in sorted(path.rglob("*"))}


# --- parameters: every numeric key of the schema -----------------------------------------------

def _schema():
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _resolve(node, defs):
    while isinstance(node, dict) and "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _numeric(node, defs) -> bool:
    node = _resolve(node, defs)
    types = node.get("type")
    types = types if isinstance(types, list) else [types]
    if "number" in types or "integer" in types:
        return True
    return any(_numeric(alt, defs) for alt in node.get("oneOf", []) + node.get("anyOf", []))


def _array_of_numbers(node, defs):
    """The array schema among ``node``'s alternatives whose items are numbers, or None."""
    node = _resolve(node, defs)
    for alt in [node] + node.get("oneOf", []) + node.get("anyOf", []):
        alt = _resolve(alt, defs)
        if alt.get("type") == "array" and _numeric(alt.get("items", {}), defs):
            return alt
    return None


def numeric_keys() -> list[tuple[str, int | None]]:
    """(dotted key of the scale section, array length or None for a scalar) of every
    number the schema allows, found by walking it."""
    schema = _schema()
    defs = schema["$defs"]
    found = []

    def walk(node, prefix):
        node = _resolve(node, defs)
        for key, sub in (node.get("properties") or {}).items():
            dotted = f"{prefix}{key}"
            array = _array_of_numbers(sub, defs)
            if array is not None:
                found.append((dotted, max(int(array.get("minItems", 1)), 1)))
            elif _numeric(sub, defs):
                found.append((dotted, None))
            else:
                walk(sub, dotted + ".")

    walk(defs["scale"], "")
    return found


NUMERIC = numeric_keys()


def test_the_walk_finds_the_numeric_keys():
    keys = dict(NUMERIC)
    for key in ("train.lr", "estimators.ode.rtol", "figures.fig5.agreement_tol", "bias.t_low",
                "evaluate.norm_t", "figures.table1.psnr", "fig1.landscape.path_t", "data.field.alpha",
                "resources.train.threads", "fig1.t_eval"):
        assert key in keys, key
    assert keys["figures.table1.psnr"] == 1 and keys["figures.fig5.log10_t"] == 2
    assert len(NUMERIC) > 80


@pytest.fixture(scope="module")
def smoke_section():
    return yaml.safe_load((REPO / "params.yaml").read_text())["scales"]["smoke"]


@pytest.mark.parametrize("key,length", NUMERIC, ids=[k for k, _ in NUMERIC])
def test_non_finite_numbers_are_refused_for_every_numeric_key(smoke_section, key, length):
    """What `load_scale(..., overrides=[KEY=VALUE])` does after reading the file: the
    override applied to the scale's section, the section validated."""
    from dsm.config import apply_overrides, validate_section

    for bad in (".nan", ".inf", "-.inf"):
        value = bad if length is None else "[" + ", ".join([bad] + ["1"] * (length - 1)) + "]"
        with pytest.raises(DsmError) as e:
            validate_section(apply_overrides(smoke_section, [f"{key}={value}"]), "--set")
        message = str(e.value)
        assert key in message and "\n" not in message, (key, bad, message)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-Infinity", "1e400", "[1, .nan]"])
def test_non_finite_spellings_through_load_scale(value):
    key = "figures.table1.psnr" if value.startswith("[") else "estimators.ode.rtol"
    with pytest.raises(DsmError, match=rf"{key}(\.1)?: -?(nan|inf) is not a finite number"):
        load_scale(REPO / "params.yaml", "smoke", overrides=[f"{key}={value}"])


def test_non_finite_numbers_in_the_params_file(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key in ("estimators.ode.rtol", "figures.fig5.agreement_tol", "train.lr"):
        bad = copy.deepcopy(params)
        node = bad["scales"]["smoke"]
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = float("nan")
        bad["run"] = bad["scales"][bad["run"]["name"]]
        f = tmp_path / "params.yaml"
        f.write_text(yaml.safe_dump(bad))
        with pytest.raises(DsmError, match=rf"scales\.smoke\.{key}: nan is not a finite number"):
            validate_params(yaml.safe_load(f.read_text()), str(f))


@pytest.mark.parametrize("override,words", [
    ("bias.t_low=1e3", "bias.t_low: 1000 must be below the normalization's level T = 1"),
    ("bias.t_low=10", "bias.t_low: 10 must be below"),
    ("evaluate.norm_t=1 ", "bias.t_low"),                       # placeholder replaced below
    ("train.t_min=20", "train.t_min: 20 must be below train.t_max = 10"),
    ("fig1.t_min=1e3", "fig1.t_min: 1000 must be below fig1.t_max"),
    ("evaluate.norm_t=1e9", "evaluate.norm_t: 1e+09 is outside the trained range"),
    ("estimators.t_lo=100", "estimators.t_lo: 100 must be below train.t_max"),
    ("figures.fig4.contrast=[4, 1]", "figures.fig4.contrast: expected [lo, hi] with lo < hi"),
    ("figures.fig5.log10_t=[0, 300]", "figures.fig5.log10_t: 300: 10^300 is outside"),
    ("figures.table1.psnr=[0, -400]", "figures.table1.psnr: -400 dB"),
    ("train.t_max=1e300", "train.t_max: 1e+300 is outside the noise levels"),
])
def test_dependent_ranges_are_checked(override, words):
    overrides = [override]
    if override.startswith("evaluate.norm_t=1 "):
        # t_low below train.t_max but not below the constant's level norm_t
        overrides, words = ["evaluate.norm_t=1e-3", "bias.t_low=1e-2"], \
            "bias.t_low: 0.01 must be below the normalization's level T = 0.001 (evaluate.norm_t)"
    with pytest.raises(DsmError) as e:
        load_scale(REPO / "params.yaml", "smoke", overrides=overrides)
    assert words in str(e.value), str(e.value)


def test_set_reads_numbers_as_yaml_1_2():
    cfg = load_scale(REPO / "params.yaml", "smoke",
                     overrides=["train.lr=5e-4", "train.steps=1e1", "estimators.ode.rtol=1E-6"])
    assert cfg["train"]["lr"] == 5e-4 and cfg["estimators"]["ode"]["rtol"] == 1e-6
    assert cfg["train"]["steps"] == 10 and isinstance(cfg["train"]["steps"], int)
    assert load_scale(REPO / "params.yaml", "smoke", overrides=["figures.fig4.wavelet=db4"])[
        "figures"]["fig4"]["wavelet"] == "db4"                  # strings stay strings


def test_a_scale_cannot_be_named_dot_dot(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["scales"][".."] = dict(params["scales"]["smoke"], name="..")
    params["run"] = params["scales"][params["run"]["name"]]
    with pytest.raises(DsmError, match=r"scales: '\.\.' does not match|scales\.\.\.|'\.\.'"):
        validate_params(params, "params.yaml")
    with pytest.raises(DsmError, match="name"):
        load_scale(REPO / "params.yaml", "smoke", overrides=["name=.."])


def test_cli_refuses_a_nan_override_in_one_line(tmp_path, capsys):
    rc, err = cli(capsys, "examples", *S, "--logp", tmp_path / "t.parquet", "--out", tmp_path / "e.json",
                  "--set", "estimators.ode.rtol=.nan")
    assert rc == 2 and "estimators.ode.rtol: nan is not a finite number" in one_line_error(err, "examples")
    assert not list(tmp_path.iterdir())


# --- a smoke model for the commands below ---------------------------------------------------------

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    w = tmp_path_factory.mktemp("bad")
    t = [*S, "--data", w / "images", "--splits", w / "sp.parquet", "--N", "10", "--split", "A"]
    for args in (["prepare", *S, "--out", w / "images"],
                 ["split", *S, "--data", w / "images", "--out", w / "sp.parquet"],
                 ["train", *t, "--out", w / "run"],
                 ["normalize", *S, "--model", w / "run/model.pt", "--data", w / "images",
                  "--out", w / "norm.json"]):
        assert main([str(a) for a in args]) == 0, args
    np.save(w / "x.npy", np.random.default_rng(0).random((3, 1, 8, 8)).astype(np.float32))
    return w


def _logp(capsys, smoke, inputs, out, *extra):
    return cli(capsys, "logp", "--model", smoke / "run/model.pt", "--norm", smoke / "norm.json",
               *inputs, "--out", out, *extra)


@pytest.mark.parametrize("option,words", [
    ("rtol=nan", "--option rtol=nan: not a finite number"),
    ("rtol=.inf", "--option rtol=.inf: not a finite number"),
    ("atol=-inf", "--option atol=-inf: not a finite number"),
    ("rtol=0", "option rtol=0: must be > 0"),
    ("n_t=abc", "option n_t='abc': expected a number"),
    ("n_t=2.5", "option n_t=2.5: expected an integer"),
    ("trace=3", "option trace=3: expected a string"),
])
def test_estimator_options_are_checked(smoke, tmp_path, capsys, option, words):
    estimator = "sde" if option.startswith("n_t") else "ode"
    rc, err = _logp(capsys, smoke, [smoke / "x.npy"], tmp_path / "o.parquet", "--estimator", estimator,
                    "--option", option)
    assert rc == 2 and words in one_line_error(err, "logp")
    assert not list(tmp_path.iterdir())


# --- a user's images ------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb(path: Path) -> Path:
    """A PNG whose header claims 100000 x 100000 pixels (and holds none)."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b""))
    return path


def _npz_with_member(path: Path, header_shape, data: bytes) -> Path:
    """An .npz whose member ``x.npy`` has a header of ``header_shape`` (float32) and ``data``."""
    buf = io.BytesIO()                                 # magic, version, header
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": tuple(header_shape)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + data)
    return path


def _npz_claims(path: Path) -> Path:
    return _npz_with_member(path, (10 ** 10, 1, 8, 8), np.zeros((2, 1, 8, 8), np.float32).tobytes())


def _npz_truncated(path: Path) -> Path:
    return _npz_with_member(path, (3, 1, 8, 8), np.zeros((3, 1, 8, 8), np.float32).tobytes()[:500])


def _text_npy(path: Path) -> Path:
    path.write_text("these are not pixels\n")
    return path


def _rgb16_as_jpg(path: Path) -> Path:
    """A 16-bit RGB PNG (PIL itself would read it as 8-bit RGB) named .jpg."""
    rows = b"".join(b"\x00" + np.full((8, 3), 40000, ">u2").tobytes() for _ in range(8))
    ihdr = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
                     + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))
    return path


IMAGES = {
    "bomb": (_bomb, "big.png", "exceeds limit"),
    "npz-claims": (_npz_claims, "c.npz", "claims an array of shape (10000000000, 1, 8, 8)"),
    "npz-truncated": (_npz_truncated, "t.npz", "truncated or corrupt"),
    "text-npy": (_text_npy, "notes.npy", "not a NumPy .npy file"),
    "rgb16-jpg": (_rgb16_as_jpg, "deep.jpg", "16-bit image"),
}


@pytest.mark.parametrize("case", list(IMAGES))
def test_bad_images_and_arrays(smoke, tmp_path, capsys, case):
    make, name, words = IMAGES[case]
    (tmp_path / "in").mkdir()
    bad = make(tmp_path / "in" / name)
    rc, err = _logp(capsys, smoke, [smoke / "x.npy", bad], tmp_path / "o.parquet")
    line = one_line_error(err, "logp")
    assert rc == 2 and words in line and str(bad) in line, line
    assert "pickle" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_file_name_that_is_not_utf8(smoke, tmp_path, capsys):
    import os

    folder = tmp_path / "in"
    folder.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "good.png")
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.png")
    with open(raw, "wb") as f:
        f.write((folder / "good.png").read_bytes())
    rc, err = _logp(capsys, smoke, [folder], tmp_path / "o.parquet")
    line = one_line_error(err, "logp")
    assert rc == 2 and "caf\\xe9.png: file name is not valid UTF-8" in line, line
    assert not (tmp_path / "o.parquet").exists()


# --- model files with the right tag and the wrong contents ------------------------------------------

def _edit_model(src: Path, dst: Path, edit) -> Path:
    payload = torch.load(src, weights_only=True)
    edit(payload)
    torch.save(payload, dst)
    return dst


def _first_weight(p):
    return sorted(p["model"])[0]


MODELS = {
    "no-model_cfg": (lambda p: p.pop("model_cfg"), "without a model_cfg mapping"),
    "dropped-weight": (lambda p: p["model"].pop(_first_weight(p)), "missing"),
    "wrong-shape": (lambda p: p["model"].__setitem__(_first_weight(p), torch.zeros(3, 3)), "has shape (3, 3)"),
    "absurd-widths": (lambda p: p["model_cfg"].__setitem__("widths", [10 ** 7, 10 ** 7]),
                      "its model_cfg gives (10000000, "),
    "shape": (lambda p: p.__setitem__("shape", [1, 8]), "is not [C, H, W]"),
    "nan-weight": (lambda p: p["model"][_first_weight(p)].fill_(float("nan")), "NaN or infinite"),
}


@pytest.mark.parametrize("case", list(MODELS))
def test_inconsistent_model_files(smoke, tmp_path, capsys, case):
    edit, words = MODELS[case]
    bad = _edit_model(smoke / "run/model.pt", tmp_path / "model.pt", edit)
    rc, err = cli(capsys, "normalize", *S, "--model", bad, "--data", smoke / "images",
                  "--out", tmp_path / "norm.json")
    line = one_line_error(err, "normalize")
    assert rc == 2 and str(bad) in line and words in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_a_norm_file_must_name_its_model(smoke, tmp_path, capsys):
    info = json.loads((smoke / "norm.json").read_text())
    info.pop("model_sha256")
    (tmp_path / "norm.json").write_text(json.dumps(info))
    rc, err = cli(capsys, "logp", "--model", smoke / "run/model.pt", "--norm", tmp_path / "norm.json",
                  smoke / "x.npy", "--out", tmp_path / "o.parquet")
    assert rc == 2 and "norm.json: key 'model_sha256' missing" in one_line_error(err, "logp")
    assert not (tmp_path / "o.parquet").exists()


# --- gumbel on values it cannot fit ------------------------------------------------------------------

@pytest.mark.parametrize("values,words", [
    ([1e300] * 5 + [-1e300] * 6, "the maximum-likelihood gumbel_r fit failed"),
    ([1.0] * 19 + [2.0], "bootstrap resamples have no finite Gumbel fit (no spread: only 2 distinct values"),
])
def test_gumbel_on_values_it_cannot_fit(tmp_path, capsys, values, words):
    pd.DataFrame({"logp_db_per_dim": values}).to_parquet(tmp_path / "t.parquet")
    before = listing(tmp_path)
    rc, err = cli(capsys, "gumbel", tmp_path / "t.parquet", "--out", tmp_path / "g", "--set", "gumbel.bootstrap=50")
    line = one_line_error(err, "gumbel")
    assert rc == 2 and words in line and "t.parquet: column 'logp_db_per_dim'" in line, line
    assert listing(tmp_path) == before                       # no NaN details, no loc.json of nulls


def test_json_writers_never_write_nan(tmp_path):
    from dsm.io import read_json, write_json

    write_json(tmp_path / "d.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": np.float64("nan")})
    assert read_json(tmp_path / "d.json") == {"a": None, "b": [1.0, None], "c": None}


# --- figure readers ---------------------------------------------------------------------------------------

def _contrast_tables(tmp_path: Path):
    affine = pd.DataFrame({"kind": ["grid"] * 4, "a": [1.0, 1.0, 2.0, 2.0], "b": [0.0, 1.0, 0.0, 1.0],
                           "image_index": 0, "image_mean": 0.5, "logp_db_per_dim": [1.0, 2.0, 3.0, 4.0],
                           "exact_logp_db_per_dim": np.nan})
    sparsity = pd.DataFrame({"participation_ratio": [0.1, 0.2], "logp_db_per_dim": [1.0, 2.0],
                             "exact_logp_db_per_dim": np.nan})
    affine.to_parquet(tmp_path / "affine.parquet")
    sparsity.to_parquet(tmp_path / "sparsity.parquet")
    (tmp_path / "details.json").write_text(json.dumps({"dataset": "field"}))


def test_fig4_with_its_inputs_swapped(tmp_path, capsys):
    _contrast_tables(tmp_path)
    before = listing(tmp_path)
    rc, err = cli(capsys, "fig4", *S, "--affine", tmp_path / "sparsity.parquet", "--sparsity",
                  tmp_path / "affine.parquet", "--details", tmp_path / "details.json", "--out", tmp_path / "f.pdf")
    line = one_line_error(err, "fig4")
    assert rc == 2 and "sparsity.parquet: not the contrast table" in line and "swapped" in line, line
    assert listing(tmp_path) == before


@pytest.mark.parametrize("cmd,args", [
    ("fig5", ["--curves", "{t}/curves.parquet", "--details", "{t}/bad.json", "--data", "{t}", "--out", "{t}/f.pdf"]),
    ("fig-bias", ["--table", "{t}/table.csv", "--totals", "{t}/bad.json", "--out", "{t}/f.pdf"]),
    ("fig4", ["--affine", "{t}/affine.parquet", "--sparsity", "{t}/sparsity.parquet", "--details",
              "{t}/bad.json", "--out", "{t}/f.pdf"]),
])
def test_invalid_json_inputs_are_named(tmp_path, capsys, cmd, args):
    _contrast_tables(tmp_path)
    pd.DataFrame({"curve": ["avg"], "kind": ["average"], "t": [1.0], "d": [64], "logp_db_per_dim": [1.0],
                  "d_eff_eq11": [1.0], "d_eff_eq12": [1.0]}).to_parquet(tmp_path / "curves.parquet")
    (tmp_path / "table.csv").write_text("t\n1.0\n")
    (tmp_path / "bad.json").write_text('{"t_norm": 1.0,')
    before = listing(tmp_path)
    rc, err = cli(capsys, cmd, *S, *[a.format(t=tmp_path) for a in args])
    line = one_line_error(err, cmd)
    assert rc == 2 and f"{tmp_path / 'bad.json'}: not valid JSON" in line, line
    assert listing(tmp_path) == before


# --- library warnings --------------------------------------------------------------------------------------

def test_library_warnings_never_come_before_the_error_line(monkeypatch, tmp_path, capsys):
    import dsm.logp

    def warns_then(fail):
        def fake(*args, **kwargs):
            warnings.warn("overflow encountered in exp", RuntimeWarning)
            warnings.warn("overflow encountered in exp", RuntimeWarning)
            if fail:
                raise DsmError(f"{tmp_path / 'x.npy'}: something is wrong")
        return fake

    monkeypatch.setattr(dsm.logp, "logp", warns_then(True))
    rc, err = cli(capsys, "logp", "--model", "m.pt", "x.npy", "--out", tmp_path / "o.parquet")
    assert rc == 2 and err.strip().splitlines() == [f"dsm logp: error: {tmp_path / 'x.npy'}: something is wrong"]
    monkeypatch.setattr(dsm.logp, "logp", warns_then(False))
    rc, err = cli(capsys, "logp", "--model", "m.pt", "x.npy", "--out", tmp_path / "o.parquet")
    assert rc == 0 and err.strip().splitlines() == \
        ["dsm logp: warning: RuntimeWarning: overflow encountered in exp"]    # once, one line
