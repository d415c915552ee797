"""The pipeline's `dsm` subcommands are derived from the stage table (dsm/cli_pipeline.py):
every stage's command line parses with its subcommand's parser and reaches the library
function with keywords it accepts; options, types, requirements and help texts follow
the table; and a new stage is its function plus its table entry, nothing else (shown in a
copy of the repository, with real Snakemake and DVC).
"""

from __future__ import annotations

import inspect
import json
import re
import shlex

import pytest

from dsm.cli import build_parser, main
from dsm.cli_pipeline import command_options, function_of, keywords, subcommands
from dsm.pipeline.stages import STAGES
from test_pipeline_util import REPO, copy_repo, dvc, run, tool

DUMMY = {"N": "10", "seed": "0", "split": "A", "scale": "smoke"}


def concrete(stage) -> list[str]:
    """The stage's command with every placeholder replaced by a recognisable value."""
    def fill(m):
        key = m.group(1)
        return DUMMY.get(key, key.replace(".", "_"))

    return shlex.split(re.sub(r"\{([A-Za-z_.]+)\}", fill, stage.full_command()))


@pytest.mark.parametrize("name", [s.name for s in STAGES.values() if s.cli is not None])
def test_every_stage_command_parses_and_binds_to_its_function(name):
    stage = STAGES[name]
    argv = concrete(stage)
    assert argv[0] == "dsm"
    args = build_parser().parse_args(argv[1:])
    assert args.command == stage.cli and STAGES[args.stage].cli == stage.cli
    kw = keywords(args, args.option_dests)
    inspect.signature(function_of(STAGES[args.stage])).bind({}, **kw)   # raises if a keyword is unknown
    given = {v for v in kw.values() if isinstance(v, str)} | {
        v for d in kw.values() if isinstance(d, dict) for v in d.values() if isinstance(v, str)}
    for out in stage.outputs:
        if f"{{output.{out}}}" in stage.args:
            assert f"output_{out}" in given, (name, out, kw)
    for inp in stage.inputs:
        if f"{{input.{inp}}}" in stage.args:
            assert f"input_{inp}" in given, (name, inp, kw)


def test_options_are_derived_from_the_args_of_every_stage_of_a_subcommand():
    train = {o.key: o for o in command_options(subcommands()["train"])}
    # --data and --out in the args of train, train_full and train_score: required
    assert train["--data"].required and train["--out"].required
    # --N only in train's: optional, typed by its placeholder {N}
    assert not train["--N"].required and train["--N"].opt.type is int
    assert train["--split"].opt.choices == ("A", "B")
    # --full without a value in train_full's args: a switch
    assert train["--full"].switch and not train["--full"].required
    assert "--device" in train and not train["--device"].required       # from `options` only
    gumbel = {o.key: o for o in command_options(subcommands()["gumbel"])}
    assert gumbel["table"].positional and gumbel["table"].dest == "logp"
    assert not gumbel["--details"].required         # Opt(required=False): optional alone


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "d", "--out", "o", "--N", "ten"], "invalid int value"),
    (["train", "--data", "d", "--out", "o", "--split", "C"], "invalid choice"),
    (["normalize", "--data", "d", "--out", "o"], "the following arguments are required: --model"),
    (["fig2", "--logp", "l", "--out", "o"], "required: --details"),
])
def test_bad_command_lines_are_refused_by_the_derived_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_model_options_are_one_line_errors(tmp_path, capsys):
    rc = main(["train", "--params", str(REPO / "params.yaml"), "--scale", "smoke", "--data",
               str(tmp_path), "--out", str(tmp_path / "run"), "--N", "10"])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "dsm train: error: --splits, --split required (or --full)"


def test_every_subcommand_has_help_for_every_option():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name, p in sub.choices.items():
        assert p.description, name
        for action in p._actions:
            assert action.help, (name, action.option_strings or action.dest)
    listed = {a.dest for a in sub._choices_actions}
    assert set(subcommands()) | {"sync", "logp"} <= listed


# --- a new stage: its function and its table entry, nothing else ----------------------------

NEW_STAGE = '''
    Stage(
        name="seed_list", entry="dsm.analysis.seed_list", reads=("seeds",),
        inputs={}, outputs={"json": "results/{scale}/seed_list.json"},
        args="--out {output.json}", resources="light",
        doc="the scale's seeds as JSON (a stage added by a test)",
        options={"--out": "output JSON"}),
'''
NEW_FUNCTION = '''"""A stage added by a test."""


def seed_list_from_params(cfg: dict, out) -> None:
    from dsm.io import write_json

    write_json(out, {"scale": cfg["name"], "seeds": list(cfg["seeds"])})
'''


def test_a_new_stage_is_its_function_and_its_table_entry(tmp_path):
    """In a copy: add one entry to STAGES and one module with its function, regenerate
    dvc.yaml; then `dsm seed_list` exists, Snakemake builds its output with its own rule,
    and `dvc repro` runs it too (no rule file, no CLI code)."""
    repo = copy_repo(tmp_path / "r", scale="smoke", git=True)
    here = {"PYTHONPATH": str(repo)}        # the jobs' `dsm` imports the copy's library
    table = repo / "dsm/pipeline/stages.py"
    text = table.read_text()
    # first in the table, not last: a rule that ran the loop's last command would fail here
    start = text.index("\n", text.index("STAGES: dict[str, Stage] = {s.name: s for s in ["))
    table.write_text(text[:start] + NEW_STAGE.rstrip("\n") + text[start:])
    (repo / "dsm/analysis/seed_list.py").write_text(NEW_FUNCTION)
    run([tool("python"), "-m", "dsm", "sync", "dvc-yaml"], repo, extra_env=here)
    assert "seed_list:" in (repo / "dvc.yaml").read_text()

    helped = run([tool("dsm"), "seed_list", "--help"], repo, extra_env=here).stdout
    assert "--out OUT" in helped and "output JSON" in helped and "--params" in helped
    run([tool("snakemake"), "results/smoke/seed_list.json", "--cores", "1"], repo, extra_env=here)
    seeds = json.loads((repo / "results/smoke/seed_list.json").read_text())
    assert seeds["scale"] == "smoke" and seeds["seeds"] and (repo / "benchmarks/smoke/seed_list.tsv").is_file()
    (repo / "results/smoke/seed_list.json").unlink()
    dvc(["repro", "--single-item", "seed_list"], repo, extra_env=here)
    assert json.loads((repo / "results/smoke/seed_list.json").read_text()) == seeds


# --- version, licence, citation -------------------------------------------------------------

def test_version_names_the_package_and_the_commit_of_a_checkout(tmp_path):
    import subprocess

    import dsm

    here = run([tool("dsm"), "--version"], REPO).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert here.startswith(f"dsm {dsm.__version__} (") and head[:12] in here, here
    # a copy that is not a checkout (as an installed package): the version alone
    copy = copy_repo(tmp_path / "c")
    alone = run([tool("python"), "-m", "dsm", "--version"], copy, extra_env={"PYTHONPATH": str(copy)})
    assert alone.stdout.strip() == f"dsm {dsm.__version__}"


def test_licence_and_citation_agree_with_the_package():
    import yaml

    tomllib = pytest.importorskip("tomllib")        # Python >= 3.11

    import dsm

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "LICENSE" in project["license-files"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    assert {"message", "title", "authors"} <= set(cff) and str(cff["version"]) == dsm.__version__
    paper = cff["preferred-citation"]
    assert paper["type"] == "conference-paper" and paper["year"] == 2025
    assert paper["title"] == "Learning normalized image densities via dual score matching"
    assert [a["family-names"] for a in paper["authors"]] == ["Guth", "Kadkhodaie", "Simoncelli"]
    assert "2506.05310" in paper["url"] and "NeurIPS 2025" in paper["collection-title"]
