"""Loading params.yaml and selecting a scale.

params.yaml holds one complete section per scale under ``scales:`` and the switch
``run: *<scale>`` (a YAML alias of one of them), which DVC and Snakemake both read.
``load_scale`` returns the resolved section of one scale as a plain dict: the file is
validated against ``workflow/schemas/params.schema.yaml``, ``--set`` overrides are
applied, the section is validated again (so an override gets the same errors as the
file) and missing keys take the schema's ``default:`` values. The schema is the only
place defaults live (:func:`section_defaults` reads them for library callers).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from dsm.errors import DsmError

REPO_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


def read_yaml(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DsmError(f"{path}: file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise DsmError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise DsmError(f"{path}: expected a mapping at the top level")
    return data


def load_scale(params_path="params.yaml", scale: str | None = None, validate: bool = True,
               overrides=()) -> dict:
    """The resolved parameter section of ``scale`` (default: the active one, ``run``),
    with ``overrides`` (``key.sub=value`` strings) applied, validated, defaults filled."""
    params = read_yaml(params_path)
    if validate:
        validate_params(params, source=str(params_path))
    if scale is None:
        if "run" not in params:
            raise DsmError(f"{params_path}: key 'run' missing (the active scale)")
        section, where = params["run"], "run"
    else:
        scales = params.get("scales") or {}
        if scale not in scales:
            raise DsmError(
                f"{params_path}: scales.{scale}: unknown scale (known: {', '.join(sorted(scales))})"
            )
        section, where = scales[scale], f"scales.{scale}"
    cfg = apply_overrides(section, overrides)
    if validate and overrides:
        validate_section(cfg, f"--set ({params_path}, {where})")
    return fill_defaults(cfg)


def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _first_error(validator, instance, source: str, prefix: str = "", text: str | None = None) -> None:
    # `run` is an alias of a scale: name the scale's own key (where the user edits) first.
    errors = sorted(validator.iter_errors(instance),
                    key=lambda e: (list(e.absolute_path)[:1] == ["run"], [str(p) for p in e.absolute_path]))
    if errors:
        e = errors[0]
        parts, message = _describe(e)
        where = ""
        if text is not None and parts[:1] == ["scales"] and len(parts) > 2:
            parts, where = _merged_origin(errors, parts, message, text)
        path = ".".join(parts)
        key = (prefix + path if path else prefix.rstrip(".")) or "<top level>"
        raise DsmError(f"{source}: {key}{where}: {message}")


def _describe(e) -> tuple[list[str], str]:
    """(dotted path parts, message) of a schema error, naming a misspelt key itself."""
    parts = [str(p) for p in e.absolute_path]
    message = e.message
    if e.validator == "additionalProperties" and isinstance(e.instance, dict):
        # name the misspelt key itself, and what is allowed there
        known = list((e.schema.get("properties") or {}))
        unknown = sorted(k for k in e.instance if k not in known)
        if unknown:
            parts.append(unknown[0])
            message = f"unknown key (known: {', '.join(known) or 'none'})"
    elif e.validator == "maxProperties" and e.validator_value == 0 and isinstance(e.instance, dict):
        parts.append(sorted(e.instance)[0])
        message = "unknown key (this section takes no options)"
    return parts, message


def _merged_origin(errors, parts: list[str], message: str, text: str) -> tuple[list[str], str]:
    """A bad key that YAML merge keys (``<<:``) or aliases share between scales gives the
    same error in each of them: report it under the scale where it is written (found by its
    line in the file) and name the scales that inherit it."""
    tail = parts[2:]
    sharing = []
    for other in errors:
        o_parts, o_message = _describe(other)
        if o_parts[:1] == ["scales"] and o_parts[2:] == tail and o_message == message \
                and o_parts[1] not in sharing:
            sharing.append(o_parts[1])
    line, origin = _yaml_origin(text, parts)
    if origin in sharing:
        parts = ["scales", origin, *tail]
    others = [s for s in sharing if s != parts[1]]
    notes = [f"line {line + 1}"] if line is not None else []
    if others:
        notes.append(f"inherited by {', '.join(f'scales.{s}' for s in others)} through a YAML "
                     f"merge key `<<:` or an alias, where it is {', '.join(f'scales.{s}.' + '.'.join(tail) for s in others)}")
    return parts, f" ({'; '.join(notes)})" if notes else ""


def _yaml_origin(text: str, parts: list[str]) -> tuple[int | None, str | None]:
    """(0-based line of the key ``parts`` in the YAML text, the scale whose section holds
    that line), following merge keys; (None, None) if not found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None, None

    def lookup(node, part):
        if isinstance(node, yaml.SequenceNode):
            return (None, node.value[int(part)]) if part.isdigit() and int(part) < len(node.value) else None
        if not isinstance(node, yaml.MappingNode):
            return None
        for k, v in node.value:
            if k.value == part and k.tag != "tag:yaml.org,2002:merge":
                return k, v
        for k, v in node.value:
            if k.tag == "tag:yaml.org,2002:merge":
                for sub in (v.value if isinstance(v, yaml.SequenceNode) else [v]):
                    found = lookup(sub, part)
                    if found:
                        return found
        return None

    node, key = root, None
    for part in parts:
        found = lookup(node, part)
        if found is None:
            return None, None
        key, node = found
    if key is None:
        return None, None
    line = key.start_mark.line
    scales = lookup(root, "scales")
    if scales and isinstance(scales[1], yaml.MappingNode):
        for k, v in scales[1].value:
            if v.start_mark.line <= line <= v.end_mark.line:
                return line, k.value
    return line, None


def validate_params(params: dict, source: str = "params.yaml") -> None:
    """Validate against the JSON schema; the error names the dotted key."""
    if not SCHEMA_PATH.is_file():
        return
    import jsonschema

    text = None
    if Path(source).is_file():
        text = Path(source).read_text()
    _first_error(jsonschema.Draft202012Validator(_schema()), params, source, text=text)
    check_params(params, source)


def validate_section(cfg: dict, source: str) -> None:
    """Validate one scale section (after overrides) against the schema's ``scale``."""
    if not SCHEMA_PATH.is_file():
        return
    import jsonschema

    schema = _schema()
    sub = {**schema["$defs"]["scale"], "$defs": schema["$defs"]}
    _first_error(jsonschema.Draft202012Validator(sub), cfg, source)
    check_params({"scales": {cfg.get("name"): cfg}}, source)


def _resolve(node: dict, defs: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[-1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill(instance, node: dict, defs: dict):
    node = _resolve(node, defs)
    if not isinstance(instance, dict):
        return instance
    for key, sub in (node.get("properties") or {}).items():
        sub = _resolve(sub, defs)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict):
            _fill(instance[key], sub, defs)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        for key in set(instance) - set(node.get("properties") or {}):
            _fill(instance[key], extra, defs)
    return instance


def fill_defaults(cfg: dict, section: str = "scale") -> dict:
    """A copy of ``cfg`` (a scale section, or one of its sub-sections named by its
    ``$defs`` entry, e.g. ``"train"``) with the schema's defaults filled in."""
    cfg = copy.deepcopy(cfg)
    if not SCHEMA_PATH.is_file():
        return cfg
    schema = _schema()
    return _fill(cfg, schema["$defs"][section], schema["$defs"])


def section_defaults(section: str) -> dict:
    """The schema's defaults of one ``$defs`` section (e.g. ``"fig1"``), for library callers."""
    return fill_defaults({}, section)


def get(cfg: dict, dotted: str, default: Any = ...) -> Any:
    """``cfg['a']['b']`` for ``'a.b'``; a missing key without default is a DsmError."""
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is ...:
                raise DsmError(f"params: key '{dotted}' missing")
            return default
        node = node[part]
    return node


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a copy of ``cfg``."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise DsmError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise DsmError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return cfg


# What Snakemake may take on its command line (`--config scale=NAME`); see check_workflow_config.
COMMAND_LINE_KEYS = ("scale",)


def _first_difference(a, b, prefix: str = ""):
    """(dotted key, value in a, value in b) of the first difference of two nested
    mappings (missing: ``...``), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _first_difference(a.get(key, ...), b.get(key, ...), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def check_workflow_config(config: dict, params_path="params.yaml") -> None:
    """Refuse a Snakemake config that differs from ``params_path`` other than in ``scale``.

    The jobs are the `dsm` commands DVC runs too (``--params params.yaml``): they read the
    file, not Snakemake's config. A value given by ``--config key=value`` or
    ``--configfile`` would be validated and recorded by Snakemake but not used by any job,
    and ``dsm sync dvc`` would then record outputs under parameters that did not make them.
    So the file stays the single source of truth: edit it (docs/pipeline.md)."""
    params = read_yaml(params_path)
    given = {k: v for k, v in config.items() if k not in COMMAND_LINE_KEYS}
    found = _first_difference(params, given)
    if found is None:
        return
    key, ours, theirs = found
    shown = "absent" if theirs is ... else repr(theirs)
    file_value = "absent" if ours is ... else repr(ours)
    raise DsmError(
        f"--config/--configfile: {key} = {shown} differs from {params_path} ({file_value}): the "
        f"jobs read {params_path} (the same commands as DVC), so this value would not be used; "
        f"edit {params_path} instead (on the command line only "
        f"{', '.join(k + '=NAME' for k in COMMAND_LINE_KEYS)} is accepted)")


# Sizes of the real sources' training splits, for checks when `data.n_train` is null (the
# train part is this less `data.n_holdout`).
SOURCE_TRAIN_SIZES = {"fashion-mnist": 60_000, "cifar10": 50_000, "imagenet64": 1_281_167}


def check_params(params: dict, source: str = "params.yaml") -> None:
    """Checks the schema cannot express; the error names the dotted key.

    * each scale's ``name`` equals its key, and ``run`` is one of the scales
      (the same values as ``scales[run.name]``, which is what commands read);
    * the A and B sets are disjoint: 2 max(split.N) <= data.n_train;
    * the image size is divisible by 2^(number of scales) of the UNet;
    * a field source has one weight per scale.
    """
    scales = params.get("scales") or {}
    sections = [(f"scales.{k}", v) for k, v in scales.items()]
    if "run" in params:
        sections.append(("run", params["run"]))
    for where, cfg in sections:
        if not isinstance(cfg, dict):
            continue
        if where != "run" and cfg.get("name") != where.split(".", 1)[1]:
            raise DsmError(f"{source}: {where}.name: {cfg.get('name')!r} must equal the "
                           f"scale's key {where.split('.', 1)[1]!r}")
        data, split, model = cfg.get("data", {}), cfg.get("split", {}), cfg.get("model", {})
        n_train = data.get("n_train")
        if not n_train and data.get("source") in SOURCE_TRAIN_SIZES:   # less the holdout part
            holdout = data.get("n_holdout") or section_defaults("data").get("n_holdout", 0)
            n_train = SOURCE_TRAIN_SIZES[data["source"]] - int(holdout)
        if n_train and split.get("N") and 2 * max(split["N"]) > n_train:
            raise DsmError(f"{source}: {where}.split.N: 2 x max(N) = {2 * max(split['N'])} "
                           f"exceeds {where}.data.n_train = {n_train} (A and B must be disjoint)")
        widths, size = model.get("widths") or [], data.get("image_size")
        if widths and size and size % 2 ** len(widths):
            raise DsmError(f"{source}: {where}.data.image_size: {size} is not divisible by "
                           f"2^{len(widths)} (model.widths has {len(widths)} scales)")
        field = data.get("field") or {}
        if "scales" in field and "weights" in field and len(field["scales"]) != len(field["weights"]):
            raise DsmError(f"{source}: {where}.data.field.weights: need one weight per scale "
                           f"(data.field.scales has {len(field['scales'])})")
    run = params.get("run")
    if isinstance(run, dict) and scales:
        name = run.get("name")
        if name not in scales:
            raise DsmError(f"{source}: run.name: {name!r} is not a scale "
                           f"(known: {', '.join(sorted(scales))}); write `run: *<scale>`")
        if scales[name] != run:
            raise DsmError(f"{source}: run: differs from scales.{name}; write `run: *{name}` "
                           f"(an alias), not a copy")


def resolve_section(given, section: str, key: str) -> dict:
    """Validate ``given`` (a mapping or None) against the schema's ``$defs/<section>`` and
    fill its defaults; errors name the dotted ``key`` (e.g. ``figures.fig2``). For
    library callers that pass a partial section; pipeline commands get it resolved."""
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise DsmError(f"{key}: expected a mapping, got {given!r}")
    if SCHEMA_PATH.is_file():
        import jsonschema

        schema = _schema()
        sub = {**schema["$defs"][section], "$defs": schema["$defs"]}
        _first_error(jsonschema.Draft202012Validator(sub), given, "params", prefix=f"{key}.")
    return fill_defaults(given, section)
