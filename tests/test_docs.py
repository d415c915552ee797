"""The documentation executes, and stands alone.

README.md and docs/*.md are read as a newcomer would read them:

* every shell line of a fenced code block that starts with ``snakemake``, ``dvc`` or ``dsm``
  (also after ``&&``, ``;`` or ``|``) runs in dry-run form in a copy of the repository:
  ``snakemake ... -n`` (lines that differ only in their targets share one dry run),
  ``dsm <command> --help`` plus a parse of the line's own arguments by the real parser,
  ``dvc status`` for ``dvc repro`` and ``dvc <command> --help`` for the rest, whose help
  must know every long option the line uses;
* every repository path the documents mention (in code spans, code blocks and links)
  exists in the repository or is an output of the stage table (``dsm/pipeline/stages.py``:
  patterns in ``{scale}``, ``{seed}``, ``{N}``, ``{split}``, with the documents' ``<scale>``,
  ``<N>``, ... or concrete values such as ``default`` and ``N100000-A``), or a file a job
  writes beside its outputs (logs, benchmarks, a training run's checkpoints);
* every relative link points into the repository, at a file that exists, and every
  ``#anchor`` of a Markdown link names a heading of its target;
* every ``dsm`` subcommand is listed in docs/cli.md;
* no document speaks of how the project was made (work sessions, dates and clock times,
  issue numbers, branches) or refers to a file outside the repository.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from test_pipeline_util import REPO, copy_repo, dvc, run, tool

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TOOLS = ("snakemake", "dvc", "dsm")
SHELL_LANGS = ("", "sh", "bash", "shell", "console")
SEPARATORS = ("&&", "||", ";", "|")

# Text about how the project was made, not what it is (case-insensitive unless noted).
MAKING = [
    (r"\bsessions?\b", "a work session"),
    (r"\btoday\b|\byesterday\b|\btonight\b", "a time word"),
    (r"\bissue\s*#?\s*\d+", "an issue number"),
    (r"\bbranch(es)?\b", "a branch"),
    (r"\b([01]?\d|2[0-3]):[0-5]\d\b", "a clock time"),
    (r"\b20\d\d-[01]\d-[0-3]\d\b", "a date"),
    (r"\bmust[- ]show\b|\btarget\s*[≤≥<>]", "a brief's target"),
    (r"\bother helpers?\b|\banother engineer\b|\bthe lead\b", "who worked on it"),
]
OUTSIDE = [(r"METHOD", "an external method file"), (r"/work/", "a path outside the repository")]

PLACEHOLDER = re.compile(r"<([A-Za-z_][\w-]*)>|\{([A-Za-z_]\w*)\}")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")


# --- reading the documents -------------------------------------------------------------

def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def split_blocks(text: str):
    """(prose lines with their numbers, fenced blocks as (lang, [(lineno, line)]))."""
    prose, blocks, block, lang = [], [], None, ""
    for i, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence and block is None:
            block, lang = [], fence.group(2).lower()
        elif fence and block is not None:
            blocks.append((lang, block))
            block = None
        elif block is not None:
            block.append((i, line))
        else:
            prose.append((i, line))
    return prose, blocks


def shell_lines(block):
    """Logical shell lines of a block: continuations joined, prompts dropped."""
    out, acc, start = [], "", None
    for i, line in block:
        if start is None:
            start = i
        if line.rstrip().endswith("\\"):
            acc += line.rstrip()[:-1] + " "
            continue
        acc += line
        out.append((start, re.sub(r"^\s*\$\s+", "", acc)))
        acc, start = "", None
    return out


def commands(doc: Path):
    """(doc, line, tokens) of every snakemake/dvc/dsm command in the document's shell blocks."""
    _, blocks = split_blocks(doc.read_text())
    found = []
    for lang, block in blocks:
        if lang not in SHELL_LANGS:
            continue
        for lineno, line in shell_lines(block):
            if not re.search(r"(^|&&|;|\|)\s*(" + "|".join(TOOLS) + r")(\s|$)", line):
                continue                          # a file listing or another program
            try:
                tokens = shlex.split(line, comments=True)
            except ValueError as e:
                raise AssertionError(f"{rel(doc)}:{lineno}: unparsable shell line {line!r}: {e}")
            segment = []
            for tok in tokens + [";"]:
                if tok in SEPARATORS:
                    if segment and segment[0] in TOOLS:
                        found.append((doc, lineno, segment))
                    segment = []
                else:
                    segment.append(tok)
    return found


ALL_COMMANDS = [c for doc in DOCS for c in commands(doc)]


def where(cmd) -> str:
    doc, lineno, tokens = cmd
    return f"{rel(doc)}:{lineno}: {shlex.join(tokens)}"


def test_the_documents_have_commands_of_each_tool():
    tools = {tokens[0] for _, _, tokens in ALL_COMMANDS}
    assert tools == set(TOOLS), tools


# --- snakemake: dry runs -----------------------------------------------------------------

def snakemake_plan(tokens: list[str], label: str):
    """(flags, targets, config) of a snakemake command line as Snakemake's own parser reads
    it; flags without the targets, --config, the core count, -n/-p and --report (a report
    needs a finished run: its workflow is planned instead)."""
    from snakemake.cli import get_argument_parser

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            args = get_argument_parser().parse_args(tokens[1:])
        except (SystemExit, ValueError) as e:   # a target swallowed by --resources: ValueError
            raise AssertionError(f"{label}: snakemake does not accept it: {err.getvalue() or e}") from e
    bad = [c for c in args.config or [] if "=" not in c]
    assert not bad, (f"{label}: {bad} after --config is read as a config value, not a target: "
                     "put targets before --config")
    flags, targets, skip = [], list(args.targets or []), 0
    rest = list(tokens[1:])
    for t in targets:
        rest.remove(t)
    for i, tok in enumerate(rest):
        if skip:
            skip -= 1
            continue
        if tok in ("--cores", "-c", "--jobs", "-j", "--report"):
            skip = 1                      # cores do not matter to a dry run; a report needs a run
        elif tok == "--config":
            skip = len(args.config)
        elif tok in ("-n", "--dry-run", "-p", "--printshellcmds"):
            pass
        elif (tok == "--software-deployment-method" and i + 1 < len(rest)
              and rest[i + 1] == "conda" and not shutil.which("conda")):
            skip = 1                      # no conda here: plan the same DAG without it
        else:
            flags.append(tok)
    return tuple(flags), targets, tuple(args.config or ())


def snakemake_dry_runs():
    """One dry run per distinct command line without its targets: {(flags, config): entry}."""
    runs: dict[tuple, dict] = {}
    for cmd in ALL_COMMANDS:
        if cmd[2][0] != "snakemake":
            continue
        flags, targets, config = snakemake_plan(cmd[2], where(cmd))
        entry = runs.setdefault((flags, config), {"targets": [], "commands": []})
        entry["targets"] += [t for t in targets if t not in entry["targets"]]
        entry["commands"].append(cmd)
    return runs


@pytest.mark.parametrize("line", [
    "snakemake --config scale=paper-gray all",
    "snakemake --config scale=paper-gray figures/fig3.pdf figures/fig6.pdf",
    "snakemake --cores 16 --resources gpu=1 all --config scale=paper",
    "snakemake --software-deployment-method conda all",
])
def test_a_swallowed_target_is_caught(line):
    with pytest.raises(AssertionError):
        snakemake_plan(shlex.split(line), line)


def test_a_plan_keeps_targets_and_config():
    flags, targets, config = snakemake_plan(
        shlex.split("snakemake --profile workflow/profiles/slurm --cores 8 all figures/fig3.pdf "
                    "--config scale=paper"), "x")
    assert (flags, targets, config) == (("--profile", "workflow/profiles/slurm"),
                                        ["all", "figures/fig3.pdf"], ("scale=paper",))


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("docs") / "repo", git=True)


def test_every_snakemake_line_plans_its_dag(repo_copy):
    runs = snakemake_dry_runs()
    assert runs
    for (flags, config), entry in runs.items():
        argv = [tool("snakemake"), *entry["targets"], *flags, "-n"]   # targets first: options with
        # several values (--resources, --config) would swallow them
        if config:
            argv += ["--config", *config]
        res = run(argv, repo_copy, check=False)
        lines = "\n".join(where(c) for c in entry["commands"])
        assert res.returncode == 0, (f"dry run failed: {shlex.join(argv[1:])}\nfor\n{lines}\n"
                                     f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}")


# --- dsm: --help, and the line's own arguments through the real parser -----------------

def dsm_parses(tokens: list[str], label: str) -> None:
    """The line's arguments through dsm's own parser: unknown options, missing required
    ones and invalid choices fail."""
    from dsm.cli import build_parser

    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            build_parser().parse_args(tokens[1:])
        except SystemExit as e:
            raise AssertionError(f"{label}: rejected by dsm's parser: {err.getvalue()}") from e


def test_every_dsm_line_is_a_valid_command(repo_copy):
    dsm_cmds = [c for c in ALL_COMMANDS if c[2][0] == "dsm"]
    assert dsm_cmds
    helped = set()
    for cmd in dsm_cmds:
        tokens = cmd[2]
        assert len(tokens) > 1, f"{where(cmd)}: no subcommand"
        if tokens[1] not in helped:
            res = run([tool("dsm"), tokens[1], "--help"], repo_copy, check=False)
            assert res.returncode == 0, f"{where(cmd)}: `dsm {tokens[1]} --help` failed:\n{res.stderr}"
            helped.add(tokens[1])
        dsm_parses(tokens, where(cmd))


@pytest.mark.parametrize("line", ["dsm train --data d --out o --bogus 1",
                                  "dsm logp --model m.pt x.png", "dsm logp --model m.pt x.png --out y --estimator x",
                                  "dsm sync git"])
def test_a_wrong_dsm_line_is_caught(line):
    with pytest.raises(AssertionError):
        dsm_parses(shlex.split(line), line)


# --- dvc: status for repro, --help for the rest ------------------------------------------

def test_every_dvc_line_is_a_valid_command(repo_copy):
    dvc_cmds = [c for c in ALL_COMMANDS if c[2][0] == "dvc"]
    assert dvc_cmds
    for cmd in dvc_cmds:
        tokens = cmd[2]
        if tokens[1:2] == ["repro"] or tokens[1:2] == ["status"]:
            res = dvc(["status"], repo_copy, check=False)
            assert res.returncode == 0, f"{where(cmd)}: `dvc status` failed:\n{res.stderr}"
            continue
        words = []
        for tok in tokens[1:3]:
            if tok.startswith("-"):
                break
            words.append(tok)
        res = dvc([*words, "--help"], repo_copy, check=False)
        if res.returncode != 0 and len(words) == 2:
            words = words[:1]
            res = dvc([*words, "--help"], repo_copy, check=False)
        assert res.returncode == 0, f"{where(cmd)}: `dvc {' '.join(words)} --help` failed:\n{res.stderr}"
        for opt in (t.split("=")[0] for t in tokens if t.startswith("--")):
            assert opt in res.stdout, f"{where(cmd)}: `dvc {' '.join(words)}` has no option {opt}"


# --- paths --------------------------------------------------------------------------------

def repository_entries() -> set[str]:
    """Files of the working tree and every directory above them (no trailing slash)."""
    from test_pipeline_util import working_tree_files

    entries = set()
    for f in working_tree_files():
        parts = f.split("/")
        for k in range(1, len(parts) + 1):
            entries.add("/".join(parts[:k]))
    return entries


def declared_outputs() -> set[str]:
    """Every output of the stage table, its log and benchmark, and the files a job writes
    beside its outputs, for every scale, replicate seed 0-2, N of the scale and split;
    with every directory above them."""
    from dsm.pipeline.stages import MODEL, STAGES

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    run_dir = MODEL.rsplit("/", 1)[0]
    beside = [run_dir + "/checkpoints", run_dir + "/metrics.jsonl", run_dir + "/config.json",
              "models/{scale}/full/checkpoints", "models/{scale}/full-score/checkpoints",
              "results/{scale}/fig1/ssm", "results/{scale}/fig1/dsm", "results/{scale}/fig1/curves.csv",
              "logs/slurm"]
    patterns = list(beside)
    for s in STAGES.values():
        patterns += list(s.outputs.values()) + [s.log(), s.benchmark_file()]
    out = set()
    for name, scale in params["scales"].items():
        values = {"scale": [name], "seed": ["0", "1", "2"], "split": ["A", "B"],
                  "N": [str(n) for n in scale["split"]["N"]]}
        for p in patterns:
            concrete = [p]
            for key, vals in values.items():
                concrete = [c.replace("{" + key + "}", v) for c in concrete for v in vals]
            for c in concrete:
                parts = c.split("/")
                for k in range(1, len(parts) + 1):
                    out.add("/".join(parts[:k]))
        root = (scale.get("data") or {}).get("root")
        if root and not root.startswith("/"):
            out.add(root)
    return out


def expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*,[^{}]*)\}", path)
    if not m:
        return [path]
    return [x for alt in m.group(1).split(",")
            for x in expand_braces(path[:m.start()] + alt + path[m.end():])]


def path_regex(path: str, scales) -> re.Pattern:
    """The document's path as a regex: <scale>/{scale} any scale, <seed>/<N> digits,
    <split> A or B, * and any other placeholder one path component (or part of one)."""
    known = {"scale": "(?:" + "|".join(map(re.escape, scales)) + ")", "seed": r"\d+", "N": r"\d+",
             "n": r"\d+", "split": "[AB]"}
    out, pos = "", 0
    for m in PLACEHOLDER.finditer(path):
        out += re.escape(path[pos:m.start()]).replace(r"\*", "[^/]*")
        out += known.get(m.group(1) or m.group(2), "[^/]+")
        pos = m.end()
    out += re.escape(path[pos:]).replace(r"\*", "[^/]*")
    return re.compile(out)


def looks_like_path(token: str, tops: set[str]) -> bool:
    first = token.split("/")[0]
    return "/" in token and first in tops or token in tops


def clean(token: str) -> str:
    token = token.strip("`'\"").split("::")[0]          # a pytest node id names its file
    token = re.sub(r"^[(\[]+", "", token)
    return re.sub(r"[),.;:\]]+$", "", token)


def mentioned_paths(text: str, tops: set[str]):
    """(line, path) of repository paths in code spans, code blocks and link targets."""
    prose, blocks = split_blocks(text)
    found = []
    for lineno, line in prose:
        for span in CODE_SPAN.findall(line):
            found += [(lineno, clean(t)) for t in span.split()]
    for lang, block in blocks:
        if lang in ("yaml", "bibtex", "text"):
            continue
        for lineno, line in block:
            tokens = re.findall(r"""["']([^"']+)["']""", line) if lang == "python" else line.split()
            found += [(lineno, clean(t)) for t in tokens]
    return [(n, p.rstrip("/")) for n, p in found
            if p and "://" not in p and "…" not in p and looks_like_path(p.rstrip("/"), tops)]


def directory_outputs() -> list[re.Pattern]:
    """Outputs that are directories (a prepared store, a directory of metrics files), and
    the SLURM executor's log directory: any path below them is theirs."""
    from dsm.pipeline.stages import STAGES

    rx = {"scale": "[^/]+", "seed": r"\d+", "N": r"\d+", "split": "[AB]"}
    out = []
    for s in STAGES.values():
        for name in s.directories:
            p = re.escape(s.outputs[name])
            for key, val in rx.items():
                p = p.replace(re.escape("{" + key + "}"), val)
            out.append(re.compile(p))
    return out + [re.compile("logs/slurm")]


def inside_a_directory_output(path: str, dirs) -> bool:
    """Whether the path (placeholders given sample values) lies below a directory output."""
    sample = {"scale": "default", "seed": "0", "N": "100", "n": "100", "split": "A"}
    concrete = PLACEHOLDER.sub(lambda m: sample.get(m.group(1) or m.group(2), "x"), path)
    parts = concrete.replace("*", "x").split("/")
    return any(d.fullmatch("/".join(parts[:k])) for k in range(1, len(parts)) for d in dirs)


class PathCheck:
    """What a document may name: the repository's files and directories, the stage
    table's outputs and what lies below its directory outputs."""

    def __init__(self):
        entries = repository_entries()
        self.tops = {e for e in entries if "/" not in e} | {"data", "models", "results", "figures",
                                                             "logs", "benchmarks"}
        self.known = entries | declared_outputs()
        self.scales = list(yaml.safe_load((REPO / "params.yaml").read_text())["scales"])
        self.dirs = directory_outputs()

    def unknown(self, text: str) -> list[tuple[int, str]]:
        bad = []
        for lineno, path in mentioned_paths(text, self.tops):
            for candidate in expand_braces(path):
                rx = path_regex(candidate, self.scales)
                if not any(rx.fullmatch(k) for k in self.known) and \
                        not inside_a_directory_output(candidate, self.dirs):
                    bad.append((lineno, candidate))
        return bad


@pytest.fixture(scope="module")
def path_check():
    return PathCheck()


def test_every_path_the_documents_mention_exists_or_is_an_output(path_check):
    missing = [f"{rel(doc)}:{n}: {p}" for doc in DOCS for n, p in path_check.unknown(doc.read_text())]
    assert not missing, "paths that neither exist nor are outputs of the stage table:\n" + "\n".join(missing)


def test_the_path_check_can_fail(path_check):
    text = "\n".join([
        "`results/<scale>/logp/seed<seed>/N<N>-<split>.parquet` `models/default/seed0/N100000-A/model.pt`",
        "`results/default/table1.{csv,md}` `workflow/report/*.rst` `data/default/images/test`",
        "`results/<scale>/logp/N<N>-<split>.parquet` `models/<scale>/N<N>-<split>/checkpoints/`",
        "```", "dsm logp --model models/default/ful/model.pt x.png --out y.parquet", "```",
        "`docs/nothing.md` `results/default/table1.{csv,xls}`",
    ])
    assert sorted(path_check.unknown(text)) == sorted([
        (3, "results/<scale>/logp/N<N>-<split>.parquet"), (3, "models/<scale>/N<N>-<split>/checkpoints"),
        (5, "models/default/ful/model.pt"), (7, "docs/nothing.md"), (7, "results/default/table1.xls")])


# --- links and anchors --------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(doc: Path) -> set[str]:
    prose, _ = split_blocks(doc.read_text())
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose:
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            out.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    return out


def test_every_link_resolves_inside_the_repository():
    bad = []
    for doc in DOCS:
        prose, _ = split_blocks(doc.read_text())
        for lineno, line in prose:
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue                       # http(s), mailto: outside links are fine
                file, _, anchor = target.partition("#")
                dest = (doc.parent / file).resolve() if file else doc
                if REPO.resolve() not in dest.parents and dest != REPO.resolve():
                    bad.append(f"{rel(doc)}:{lineno}: {target} points outside the repository")
                elif not dest.exists():
                    bad.append(f"{rel(doc)}:{lineno}: {target}: no such file")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    bad.append(f"{rel(doc)}:{lineno}: {target}: no heading with that anchor")
    assert not bad, "\n".join(bad)


def test_anchor_slugs_follow_github():
    assert slug("Faults: `kill -9` at any moment") == "faults-kill--9-at-any-moment"
    assert slug("Snakemake ⇄ DVC") == "snakemake--dvc"
    assert slug("The exact-likelihood benchmark (`field`)") == "the-exact-likelihood-benchmark-field"


# --- the command line is documented -------------------------------------------------------

def test_every_dsm_subcommand_is_in_docs_cli():
    from dsm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    text = (REPO / "docs" / "cli.md").read_text()
    listed = set(re.findall(r"`dsm ([a-z][\w-]*)", text))
    missing = sorted(set(sub.choices) - listed)
    assert not missing, f"docs/cli.md does not list: {missing}"
    unknown = sorted(listed - set(sub.choices))
    assert not unknown, f"docs/cli.md lists commands dsm does not have: {unknown}"


# --- what the documents speak of ----------------------------------------------------------

@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_the_documents_speak_of_the_project(doc):
    hits = []
    for i, line in enumerate(doc.read_text().splitlines(), 1):
        for rx, what in MAKING:
            for m in re.finditer(rx, line, flags=re.IGNORECASE):
                hits.append(f"{rel(doc)}:{i}: {what}: {m.group(0)!r}")
        for rx, what in OUTSIDE:
            for m in re.finditer(rx, line):
                hits.append(f"{rel(doc)}:{i}: {what}: {m.group(0)!r}")
    assert not hits, "\n".join(hits)


def test_the_word_checks_can_fail(tmp_path):
    lines = ["as measured in an earlier session", "run at 21:49 on 2026-11-25", "see issue #9",
             "on branch `recipe`", "target ≤ 0.15", "see METHOD.md", "/work/shared/x"]
    for line in lines:
        assert any(re.search(rx, line, flags=re.IGNORECASE) for rx, _ in MAKING) or \
            any(re.search(rx, line) for rx, _ in OUTSIDE), line
