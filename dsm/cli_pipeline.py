"""The pipeline's ``dsm`` subcommands, derived from the stage table (dsm/pipeline/stages.py).

One subcommand per distinct :attr:`Stage.cli` (``dsm train`` runs the stages train,
train_full and train_score). Its parser comes from the stages' ``args`` and the first such
stage's texts and ``options``:

* a ``--flag`` followed by a value in ``args`` takes a value; one followed by another flag
  (or nothing) is a switch (``--full``); a bare value is a positional argument, named by
  the ``options`` key without dashes;
* an option is required when every stage of the subcommand gives it a value (``Opt``'s
  ``required`` overrides);
* ``{N}`` and ``{seed}`` values are integers, ``{split}`` is A or B; other types and
  choices come from :class:`~dsm.pipeline.stages.Opt`;
* help texts: the stage's ``options``, else :data:`~dsm.pipeline.stages.OPTION_HELP`;
  options that no ``args`` names (``--device``) come from ``options`` alone.

The handler loads the scale section (``--params``/``--scale``/``--set``) and calls
``<entry>.<subcommand>_from_params(cfg, **options)`` (dashes as underscores), or the
stage's ``call``; the few subcommands whose options are not one function's keywords have
their small adapter at the end of this module. Library modules are imported when a
subcommand runs, never at parse time (``dsm --help`` stays fast).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from dsm.errors import DsmError
from dsm.pipeline.stages import OPTION_HELP, SPLITS, STAGES, Opt, Stage

# values in `args` that fix an option's type: the model wildcards
_WILDCARD_TYPES = {"{N}": Opt("", type=int), "{seed}": Opt("", type=int),
                   "{split}": Opt("", choices=SPLITS)}


def add_params_options(p: argparse.ArgumentParser) -> None:
    """--params/--scale/--set, shared by the commands the pipeline calls."""
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--scale", default=None,
                   help="scale section of params.yaml to use (default: the active one, `run`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter of the scale section, e.g. train.steps=100")


def scale_cfg(args, optional: tuple[str, ...] | None = None) -> dict:
    """The scale section the command runs with. ``optional``: the sections a stage that
    runs without a parameter file reads; with no ``--params``/``--scale`` given and no
    params.yaml, those sections get the schema's defaults (plus ``--set``)."""
    from pathlib import Path

    from dsm.config import apply_overrides, load_scale, resolve_section

    if (optional is not None and args.params == "params.yaml" and args.scale is None
            and not Path(args.params).is_file()):
        given = apply_overrides({s: {} for s in optional}, args.overrides)
        return {s: resolve_section(given.get(s), s, s) for s in optional}
    return load_scale(args.params, args.scale, overrides=args.overrides)


# --- the parser of a subcommand, from the table -------------------------------------------

@dataclass(frozen=True)
class Option:
    """One argument of a derived parser."""

    key: str              # "--flag", or a positional's name
    opt: Opt              # help, type, choices, dest, ...
    switch: bool          # a flag without value (store_true)
    required: bool

    @property
    def dest(self) -> str:
        return self.opt.dest or self.key.lstrip("-").lower().replace("-", "_")

    @property
    def positional(self) -> bool:
        return not self.key.startswith("-")


def subcommands() -> dict[str, list[Stage]]:
    """{subcommand: the stages that run it, in table order}."""
    out: dict[str, list[Stage]] = {}
    for s in STAGES.values():
        if s.cli is not None:
            out.setdefault(s.cli, []).append(s)
    return out


def _tokens(args: str) -> list[tuple[str | None, str | None]]:
    """``args`` as ``(flag, value)`` pairs: ``(flag, None)`` for a switch, ``(None, value)``
    for a positional value."""
    words, out, i = args.split(), [], 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            out.append((w, value))
            i += 2 if value is not None else 1
        else:
            out.append((None, w))
            i += 1
    return out


def _as_opt(stage: Stage, key: str) -> Opt:
    given = stage.options.get(key)
    if isinstance(given, Opt):
        return given
    text = given if given is not None else OPTION_HELP.get(key)
    if text is None:
        raise ValueError(f"stage {stage.name}: option {key} of `dsm {stage.cli}` has no help text "
                         "(add it to the stage's options)")
    return Opt(text)


def command_options(stages: list[Stage]) -> list[Option]:
    """The arguments of the subcommand that runs ``stages`` (the first one declares
    ``options``), in the order ``args`` and then ``options`` name them."""
    owner = stages[0]
    positionals = [k for k in owner.options if not k.startswith("-")]
    seen: dict[str, dict] = {}
    for s in stages:
        n_positional = 0
        for flag, value in _tokens(s.args):
            if flag is None:
                if n_positional >= len(positionals):
                    raise ValueError(f"stage {s.name}: positional value {value} has no name in "
                                     f"the options of stage {owner.name}")
                flag, n_positional = positionals[n_positional], n_positional + 1
            entry = seen.setdefault(flag, {"stages": set(), "values": set(), "switch": set()})
            entry["stages"].add(s.name)
            entry["switch"].add(value is None)
            if value is not None:
                entry["values"].add(value)
    for key in owner.options:
        seen.setdefault(key, {"stages": set(), "values": set(), "switch": {False}})
    out = []
    for key, e in seen.items():
        if len(e["switch"]) > 1:
            raise ValueError(f"`dsm {owner.cli}`: {key} has a value in some stages' args and none in others")
        opt = _as_opt(owner, key)
        typed = [_WILDCARD_TYPES[v] for v in e["values"] if v in _WILDCARD_TYPES]
        if typed and opt.type is None and not opt.choices:
            opt = Opt(opt.help, type=typed[0].type, choices=typed[0].choices, dest=opt.dest,
                      required=opt.required, default=opt.default, metavar=opt.metavar)
        switch = True in e["switch"]
        required = (not switch and len(e["stages"]) == len(stages)) if opt.required is None else opt.required
        out.append(Option(key, opt, switch, required or not key.startswith("-")))
    return out


def _metavar(o: Option) -> str | None:
    if o.opt.metavar is not None:
        return o.opt.metavar
    if o.opt.choices:
        return None                 # argparse shows {a,b}
    return re.sub(r"\W", "_", o.key.lstrip("-")).upper()


def add_stage_commands(sub) -> None:
    """One parser per pipeline subcommand, in table order."""
    for name, stages in subcommands().items():
        owner = stages[0]
        p = sub.add_parser(name, help=owner.doc, description=owner.description or owner.doc)
        add_params_options(p)
        options = command_options(stages)
        for o in options:
            if o.positional:
                p.add_argument(o.dest, metavar=_metavar(o), help=o.opt.help)
            elif o.switch:
                p.add_argument(o.key, dest=o.dest, action="store_true", help=o.opt.help)
            else:
                p.add_argument(o.key, dest=o.dest, required=o.required, type=o.opt.type,
                               choices=o.opt.choices or None, default=o.opt.default,
                               metavar=_metavar(o), help=o.opt.help)
        p.set_defaults(func=run_stage_command, stage=owner.name, option_dests=[o.dest for o in options])


def function_of(stage: Stage):
    """The function the stage's subcommand calls (imported here, at run time)."""
    import importlib

    target = stage.call or f"{stage.entry}:{stage.cli.replace('-', '_')}_from_params"
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def keywords(args, dests: list[str]) -> dict:
    """The parsed options as the function's keywords (``a.b`` -> ``a={"b": ...}``)."""
    out: dict = {}
    for dest in dests:
        key, _, inner = dest.partition(".")
        if inner:
            out.setdefault(key, {})[inner] = getattr(args, dest)
        else:
            out[key] = getattr(args, dest)
    return out


def run_stage_command(args) -> None:
    stage = STAGES[args.stage]
    optional = tuple(sorted({k.split(".")[0] for k in stage.reads})) if stage.params_optional else None
    function_of(stage)(scale_cfg(args, optional), **keywords(args, args.option_dests))


# --- adapters: subcommands whose options are not one function's keywords ---------------------

def prepare(cfg: dict, out) -> None:
    from dsm.data.prepare import prepare as prepare_store

    prepare_store(cfg.get("data"), out)


def split(cfg: dict, data, out) -> None:
    from dsm.data.splits import make_splits

    make_splits(data, cfg.get("split"), out)


def _split_model(full: bool, splits, n, split) -> None:
    """--full, or all of --splits, --N and --split."""
    if full:
        if n is not None or split is not None:
            raise DsmError("--full uses every image: do not give --N or --split")
        return
    missing = [f"--{k}" for k, v in (("splits", splits), ("N", n), ("split", split)) if v is None]
    if missing:
        raise DsmError(f"{', '.join(missing)} required (or --full)")


def train(cfg: dict, data, out, splits=None, n=None, split=None, full=False, seed=None, kind=None,
          device=None) -> None:
    """`dsm train`: one A/B model, or with --full the full model (base seed: full.seed)."""
    from dsm.train import FULL, train_from_params

    _split_model(full, splits, n, split)
    if full:
        seed = seed if seed is not None else int(cfg["full"]["seed"])
        train_from_params(cfg, data=data, splits=None, n=None, split=FULL, out=out, seed=seed,
                          kind=kind, device=device)
        return
    train_from_params(cfg, data=data, splits=splits, n=n, split=split, out=out,
                      seed=seed if seed is not None else int(cfg["seeds"][0]), kind=kind, device=device)


def evaluate(cfg: dict, model, norm, data, out, splits=None, n=None, split=None, full=False,
             device=None) -> None:
    """`dsm evaluate`: a model on its own, the other set's and test images, or with --full
    the full model on every test image."""
    from dsm.evaluate import evaluate_from_params, evaluate_test_set_from_params

    _split_model(full, splits, n, split)
    if full:
        evaluate_test_set_from_params(cfg, model=model, norm=norm, data=data, out=out, device=device)
        return
    evaluate_from_params(cfg, model=model, norm=norm, data=data, splits=splits, n=n, split=split,
                         out=out, device=device)


def table1(cfg: dict, energy, score, data, out, device=None) -> None:
    """`dsm table1 --out PREFIX`: PREFIX.csv, .md, .tex, .json and PREFIX_metrics/."""
    from dsm.analysis.denoising import table1_from_params

    paths = {k: f"{out}.{k}" for k in ("csv", "md", "tex", "json")} | {"metrics": f"{out}_metrics"}
    table1_from_params(cfg, energy=energy, score=score, data=data, out=paths, device=device)
