"""Reference parts of ``docs/runspec.md``, ``docs/cli.md`` and ``docs/formats.md``, generated from
the code so they cannot drift.

The docs' prose is written by hand; only the blocks between ``<!-- BEGIN GENERATED: <name> -->``
and ``<!-- END GENERATED: <name> -->`` come from here. In ``docs/runspec.md``: every key of the
``PipelineRun`` document (:mod:`pgx_core.spec.runspec`) and every ``with:`` parameter of each
built-in stage (the stages that pgx's own distribution registers through its ``pgx.plugins`` entry
points; third-party plugins document theirs). In ``docs/cli.md``: the global options and every
sub-command of ``pgx`` with its arguments, read from the argparse parser built with the same
built-in plugins only. In ``docs/formats.md``: the lake layout, drawn by calling
:mod:`pgx_core.lake.paths`, and the keys of ``state.json`` from its model. ``tests/docs`` fails
when a committed file differs from what this module generates. Regenerate them all with::

    python -m pgx_core.cli.docgen --write

A key's meaning is its pydantic ``Field(description=...)``; the core spec models have none (their
prose lives here, in :data:`MEANINGS`), so adding a key without saying what it means fails loudly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import distribution
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from pgx_core import clock
from pgx_core.cli import build_parser
from pgx_core.lake import paths
from pgx_core.pluginmanager import Plugins, make_plugin_manager
from pgx_core.spec.runspec import PipelineRun, StageParams
from pgx_core.stage import Stage, StageRegistry
from pgx_core.state import PipelineState

DISTRIBUTION = "pgx"
GROUP = "pgx.plugins"

# Meanings of the core spec keys (pgx_core.spec.runspec declares no descriptions), by key path.
MEANINGS: dict[str, str] = {
    "apiVersion": "Version of the document format; exactly `pgx.io/v1alpha1`.",
    "kind": "Exactly `PipelineRun`.",
    "metadata": "Identity of the run spec (Kubernetes-style).",
    "metadata.name": "Name of the spec (a DNS-1123 label: lower-case letters, digits, `-`, at most 63). "
    "Recorded as `run_name` in every summary; `pgx render` derives object names from it.",
    "metadata.namespace": "Kubernetes namespace for `pgx render` when `--namespace` is not given.",
    "metadata.labels": "Free-form labels for your own bookkeeping (kept in the spec `pgx render` embeds). "
    "Not part of the spec fingerprint.",
    "metadata.annotations": "Free-form annotations, as labels. Not part of the spec fingerprint.",
    "spec": "What to run and where.",
    "spec.lake": "Root URI of the lake: `s3://BUCKET[/PREFIX]` or `file:///ABS/PATH` (a trailing `/` is dropped).",
    "spec.stateRoot": "Where state and leases live (`<stateRoot>/pgx-pipeline-status/…`). Default: "
    "`s3://pgx-repository` for an S3 lake, `<lake>/_state` for a file lake.",
    "spec.backupRoot": "Where promotion backs up replaced objects (`<backupRoot>/backup_<stamp>/…`). "
    "Default: `<lake>/_backups/`.",
    "spec.s3": "Object-store settings. Credentials are never here: they come from the standard AWS chain.",
    "spec.s3.endpointUrl": "S3 endpoint for MinIO, moto or an on-premises store; `null` for AWS.",
    "spec.s3.region": "AWS region of the buckets.",
    "spec.s3.allowUnsafeStore": "Run even when the store does not enforce conditional writes "
    "(`If-None-Match`/`If-Match`). State and leases are then unsafe with concurrent runs; never in production.",
    "spec.partitions": "Which partitions the run covers.",
    "spec.partitions.years": "Event years of the run (1900-2100; sorted and de-duplicated). Rows of other "
    "years are counted as out of scope by impute.",
    "spec.partitions.ageBands": "`all`, or a list of the age bands `0-12` … `95-114`, `unknown`.",
    "spec.executor": "How work items run.",
    "spec.executor.type": "`ray` fans entities out over Ray; `local` runs them in-process, one at a time "
    "(same results; for debugging).",
    "spec.executor.address": "`null` starts a local Ray; `auto` or `ray://HOST:10001` joins a cluster "
    "(e.g. a KubeRay head service). The `RAY_ADDRESS` environment variable wins.",
    "spec.executor.maxParallel": "Cap on concurrent work items (`null`: as many as Ray's memory resource admits).",
    "spec.executor.memoryBudgetMb": "Memory per work item in MB; stages size buckets and chunks to fit and "
    "Ray schedules by it.",
    "spec.executor.cpusPerItem": "CPUs each work item asks Ray for (fractions allowed). With the memory "
    "budget it decides how many items a node runs at once: a 16-CPU node runs 16 items of 1 CPU "
    "if its memory admits them.",
    "spec.limit": "Smoke runs: per stage, run at most N of the entities that need work (those with input "
    "rows); the rest wait for a later run (`pgx run --limit` overrides).",
    "spec.leaseTtlSeconds": "Lifetime of an entity lease (5-3600 s); renewed every third of it while the "
    "entity is worked on. An expired lease may be taken over by another run.",
    "spec.onUpdate": "For `pgx controller`: what a new generation of a PipelineRun (its spec edited) does "
    "while the previous generation's Job still runs: `wait` for it to end, or `cancel` it (the Job's pod is "
    "stopped with SIGTERM and writes its summary). Never two Jobs of one PipelineRun at once. `pgx run` "
    "ignores it, and it is not part of the spec fingerprint.",
    "spec.stages": "The stages to run, in order (at least one).",
    "spec.stages[].use": "Stage type, registered by a plugin (`pgx plugins` lists them).",
    "spec.stages[].name": "Name of the stage within the spec (unique; default: `use`). `pgx run --stage NAME` "
    "selects it.",
    "spec.stages[].with": "Parameters of the stage, checked by the stage's own model (tables below).",
}
# Built-in stage parameters without a Field description, as "<stage type>.<key>".
PARAM_MEANINGS: dict[str, str] = {
    "reprocess.delimiter": "Field delimiter of the rejected lines (as in ingest).",
    "update-codes.datasets": "Gold datasets to rewrite: `medical`, `pharmacy` or both. Medical needs "
    "`targetMap`, pharmacy needs `drugMap`.",
}


class DocGenError(Exception):
    """A key has no meaning to document (add a ``Field(description=...)`` or a MEANINGS entry)."""


@dataclass(frozen=True)
class KeyDoc:
    """One documented key: its path (camelCase, by alias), type, default and meaning."""

    path: str
    type: str
    default: str
    meaning: str


# --- models → rows ----------------------------------------------------------------------------------


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds directly or as a list's item, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def type_name(annotation: Any) -> str:
    """Human type of an annotation: ``int | None`` → ``integer or null``."""
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if annotation is Any:
        return "any"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{json.dumps(a)}`" for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is list:
        if not args:
            return "list"
        item = type_name(args[0])
        return f"list of ({item})" if " or " in item else f"list of {item}"
    if origin is dict:
        return "mapping" if not args or args[1] is Any else f"mapping of {type_name(args[0])} to {type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mapping"
    return getattr(annotation, "__name__", str(annotation))


def _constraints(info: FieldInfo) -> str:
    out = []
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            out.append(f"≥ {m.ge}")
        elif isinstance(m, annotated_types.Gt):
            out.append(f"> {m.gt}")
        elif isinstance(m, annotated_types.Le):
            out.append(f"≤ {m.le}")
        elif isinstance(m, annotated_types.Lt):
            out.append(f"< {m.lt}")
        elif isinstance(m, annotated_types.MinLen):
            out.append(f"length ≥ {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            out.append(f"length ≤ {m.max_length}")
    return ", ".join(out)


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is clock.iso:
        return "time of writing"
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "see below"
    return f"`{json.dumps(value)}`"


def walk(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, FieldInfo, type[BaseModel] | None]]:
    """``(key path, field, nested model)`` of every key of ``model``, depth first, by alias."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        nested = _model_of(info.annotation)
        yield path, info, nested
        if nested is not None:
            suffix = "[]." if get_origin(info.annotation) is list else "."
            yield from walk(nested, path + suffix)


def key_docs(model: type[BaseModel], meanings: dict[str, str], meaning_prefix: str = "") -> list[KeyDoc]:
    """One :class:`KeyDoc` per key; raises :class:`DocGenError` naming every key without a meaning."""
    out: list[KeyDoc] = []
    missing: list[str] = []
    for path, info, _ in walk(model):
        meaning = info.description or meanings.get(meaning_prefix + path)
        if not meaning:
            missing.append(meaning_prefix + path)
            continue
        kind = type_name(info.annotation)
        limits = _constraints(info)
        out.append(KeyDoc(path, f"{kind}; {limits}" if limits else kind, _default(info), meaning))
    if missing:
        raise DocGenError(
            f"Keys without a meaning: {', '.join(missing)}. Add Field(description=...) to the model, "
            "or an entry to pgx_core.cli.docgen.MEANINGS / PARAM_MEANINGS."
        )
    return out


def _cell(text: str) -> str:
    """A table cell: ``|`` escaped; ``<…>`` outside code spans escaped (it would vanish as a tag)."""
    parts = text.replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # even parts lie outside backticks
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).replace("|", "\\|")


def table(rows: list[KeyDoc]) -> str:
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{r.path}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.meaning)} |" for r in rows]
    return "\n".join(lines)


# --- sections -----------------------------------------------------------------------------------------


def builtin_stages() -> list[type[Stage[Any]]]:
    """Stage classes registered by pgx's own distribution, sorted by type name.

    Loaded straight from the distribution's entry points (not through the plugin manager), so
    neither installed third-party plugins nor ``PGX_DISABLE_PLUGINS`` change the documentation.
    """
    registry = StageRegistry()
    for ep in sorted(distribution(DISTRIBUTION).entry_points, key=lambda e: e.name):
        register = getattr(ep.load(), "pgx_register_stages", None) if ep.group == GROUP else None
        if register is not None:  # (a built-in plugin may add commands or files and no stage)
            registry._current_plugin = ep.name
            register(registry=registry)
    return [cls for _, cls in registry.items()]


def spec_section() -> str:
    return table(key_docs(PipelineRun, MEANINGS))


def stages_section() -> str:
    parts = []
    for cls in builtin_stages():
        params: type[StageParams] = cls.Params
        head = (
            f"### `{cls.type_name}`\n\ntx `{cls.tx}` · script_name `{cls.script_name}` · "
            f"parameter model `{params.__module__}.{params.__qualname__}`\n\n"
        )
        rows = key_docs(params, PARAM_MEANINGS, f"{cls.type_name}.")
        parts.append(head + (table(rows) if rows else "No parameters (`with:` may be omitted)."))
    return "\n\n".join(parts)


# --- the command line (docs/cli.md) -------------------------------------------------------------------

DISABLE_VARIABLE = "PGX_DISABLE_PLUGINS"

Section = Callable[[], str]


def builtin_plugins() -> Plugins:
    """A plugin manager holding exactly the plugins of pgx's own distribution.

    They are registered straight from the distribution's entry points, with ``PGX_DISABLE_PLUGINS``
    set aside while they load, so neither installed third-party plugins nor that variable change
    the documentation.
    """
    eps = sorted((ep for ep in distribution(DISTRIBUTION).entry_points if ep.group == GROUP), key=lambda e: e.name)
    saved = os.environ.pop(DISABLE_VARIABLE, None)
    try:
        return make_plugin_manager([(ep.name, ep.load()) for ep in eps], entrypoints=False)
    finally:
        if saved is not None:
            os.environ[DISABLE_VARIABLE] = saved


def cli_parser() -> argparse.ArgumentParser:
    """The ``pgx`` parser with the core's commands and those the built-in plugins add."""
    return build_parser(builtin_plugins())


Commands = list[tuple[str, str, argparse.ArgumentParser]]


def subcommands(parser: argparse.ArgumentParser) -> Commands:
    """``(name, help, parser)`` of every sub-command, in the order the parser lists them (aliases left
    out); none for a parser without sub-commands (``pgx runs`` has some: ``list``, ``get``, ``logs``)."""
    action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    return [] if action is None else _choices(action)


def _choices(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> Commands:
    helps = {a.dest: a.help or "" for a in action._choices_actions}
    seen: set[int] = set()
    out = []
    for name, sub in action.choices.items():
        if id(sub) not in seen:
            seen.add(id(sub))
            out.append((name, helps.get(name) or sub.description or "", sub))
    return out


def _value(action: argparse.Action) -> str:
    """The value part of an argument as argparse's usage shows it: ``NAME``, ``[N]``, ``{a,b}``, ``CMD ...``."""
    base: str | tuple[str, ...]
    if action.metavar is not None:
        base = action.metavar
    elif action.choices is not None:
        base = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        base = action.dest.upper() if action.option_strings else action.dest

    def get(n: int) -> tuple[str, ...]:
        return base if isinstance(base, tuple) else (base,) * n

    nargs = action.nargs
    if nargs is None:
        return get(1)[0]
    if nargs == argparse.OPTIONAL:
        return f"[{get(1)[0]}]"
    if nargs == argparse.ZERO_OR_MORE:
        metas = get(1)
        return f"[{metas[0]} [{metas[1]} ...]]" if len(metas) == 2 else f"[{metas[0]} ...]"
    if nargs == argparse.ONE_OR_MORE:
        return "{} [{} ...]".format(*get(2))
    if nargs == argparse.REMAINDER:
        return "..."
    if nargs == argparse.PARSER:
        return f"{get(1)[0]} ..."
    if nargs == argparse.SUPPRESS:
        return ""
    return " ".join(get(int(nargs)))


def _usage_part(action: argparse.Action) -> str:
    if not action.option_strings:
        return _value(action)
    part = " ".join(filter(None, [action.option_strings[0], _value(action)]))
    return part if action.required else f"[{part}]"


def _usage(prog: str, actions: list[argparse.Action]) -> str:
    """A usage line, unwrapped: options first, then positionals (as argparse orders them)."""
    optionals = [_usage_part(a) for a in actions if a.option_strings]
    positionals = [_usage_part(a) for a in actions if not a.option_strings]
    return " ".join([prog, *optionals, *positionals])


def _names(action: argparse.Action) -> str:
    value = _value(action)
    if not action.option_strings:
        return f"`{value}`"
    return ", ".join(f"`{opt} {value}`" if value else f"`{opt}`" for opt in action.option_strings)


def _arg_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
        return ""  # a flag's default is its absence
    return f"`{action.default}`"


def _help(action: argparse.Action, prog: str) -> str:
    """The argument's help with argparse's ``%(name)s`` placeholders filled in."""
    text = action.help or ""
    if "%" in text:
        params: dict[str, Any] = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    return text


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    return text[0].upper() + text[1:] + ("" if text[-1] in ".!?" else ".")


def _anchor(prog: str) -> str:
    return "#" + prog.replace(" ", "-")


def _meaning(action: argparse.Action, prog: str) -> str:
    """A table cell's meaning: the help, or for a command's own sub-commands links to their sections."""
    if isinstance(action, argparse._SubParsersAction):
        return "one of " + ", ".join(f"[`{name}`]({_anchor(sub.prog)})" for name, _, sub in _choices(action))
    return _cell(_help(action, prog))


def _arg_table(actions: list[argparse.Action], prog: str) -> str:
    lines = ["| argument | default | meaning |", "|---|---|---|"]
    lines += [f"| {_cell(_names(a))} | {_cell(_arg_default(a))} | {_meaning(a, prog)} |" for a in actions]
    return "\n".join(lines)


def _shown(action: argparse.Action) -> bool:
    """Whether an argument belongs in the reference (``--help`` and hidden arguments do not)."""
    return not isinstance(action, argparse._HelpAction) and action.help is not argparse.SUPPRESS


def cli_global_section() -> str:
    parser = cli_parser()
    actions = [a for a in parser._actions if _shown(a)]
    options = [a for a in actions if a.option_strings]
    return f"```text\n{_usage(parser.prog, actions)}\n```\n\n{_arg_table(options, parser.prog)}"


def _command_section(
    name: str, help_: str, sub: argparse.ArgumentParser, common: set[tuple[str, ...]], level: int = 2
) -> str:
    """A command's heading, help, usage line and arguments; then, a level down, its own sub-commands."""

    def own(actions: list[argparse.Action]) -> list[argparse.Action]:
        return [a for a in actions if _shown(a) and tuple(a.option_strings) not in common]

    parts = [f"{'#' * level} {sub.prog}", _cell(_sentence(help_))]
    plugin = getattr(sub.get_default("command_def"), "plugin", "")
    if plugin:
        parts.append(f"Added by the built-in plugin `{plugin}`.")
    parts.append(f"```text\n{_usage(sub.prog, own(sub._actions))}\n```")
    # The default groups ("positional arguments", "options") form one table; each other group its own.
    defaults = (sub._positionals, sub._optionals)
    main = own([a for g in defaults for a in g._group_actions])
    parts.append(_arg_table(main, sub.prog) if main else "No arguments besides the global options.")
    for group in sub._action_groups:
        actions = own(group._group_actions)
        if group in defaults or not actions:
            continue
        intro = _sentence(group.title or "")
        if group.description:
            intro = f"{intro} {_sentence(group.description)}".strip()
        parts += [_cell(intro.rstrip(".") + ":"), _arg_table(actions, sub.prog)]
    parts += [_command_section(n, h, p, common, level + 1) for n, h, p in subcommands(sub)]
    return "\n\n".join(parts)


def cli_commands_section() -> str:
    parser = cli_parser()
    # The global options every command accepts too: documented once, in the global section.
    common = {tuple(a.option_strings) for a in parser._actions if a.option_strings}
    commands = subcommands(parser)
    index = ["| command | what it does |", "|---|---|"]
    index += [f"| [`{sub.prog}`]({_anchor(sub.prog)}) | {_cell(_sentence(h))} |" for _, h, sub in commands]
    return "\n\n".join(["\n".join(index)] + [_command_section(n, h, sub, common) for n, h, sub in commands])


# --- the lake and its formats (docs/formats.md) ------------------------------------------------------

# Placeholders the layout is drawn with: each path below is what pgx_core.lake.paths returns for them.
LAKE, STATE, BACKUP, RUN = "<lake>", "<stateRoot>", "<backupRoot>", "<run_id>"
_ENTITY = "<lake key>__<entity>"


def _layout_rows() -> list[tuple[str, str, str]]:
    """``(what, where, written by)`` of every kind of object pgx keeps."""
    backup = paths.backup_prefix(BACKUP, "<stamp>")
    icd, procedure, suggested = paths.target_code_objects(LAKE)
    partition = ("<dataType>", "<band>", "<year>")
    return [
        ("raw extracts", paths.raw_prefix(LAKE, "<dataType>") + "<name>.txt", "you (`pgx sample` for synthetic ones)"),
        ("bronze", paths.bronze_object(LAKE, "<dataType>", "<stem>"), "`ingest`"),
        ("bronze, repaired", paths.bronze_repro_object(LAKE, "<dataType>", "<stem>"), "`reprocess`"),
        ("rejected lines", paths.bronze_rejects_object(LAKE, "<dataType>", "<stem>"), "`ingest`, `reprocess`"),
        ("silver", paths.silver_object(LAKE, *partition), "`impute`"),
        ("silver quarantine", paths.silver_quarantine_object(LAKE, "<dataType>"), "`impute`"),
        ("demographic profiles", paths.demographics_object(LAKE, "<year>"), "`impute`"),
        ("gold", paths.gold_object(LAKE, *partition), "`clean-*`; rewritten in place by `update-codes`"),
        ("ICD code frequencies", icd, "`target-frequency`"),
        ("procedure code frequencies", procedure, "`target-frequency`"),
        ("suggested code mappings", suggested, "`target-frequency`"),
        ("run summaries", paths.summary_object(LAKE, "<script_name>", RUN), "every stage, every run"),
        ("staged outputs", paths.staging_object(LAKE, RUN, f"{LAKE}/<key>"), "every stage; removed on promotion"),
        ("a live run's lease", paths.run_lease_object(LAKE, RUN), "every run; removed last"),
        ("entity state", paths.state_object(STATE, "<script_name>", _ENTITY), "every stage"),
        ("entity lease", paths.lease_object(STATE, "<script_name>", _ENTITY), "while an entity is worked on"),
        ("per-stage tracker", paths.tracker_object(STATE, "<script_name>"), "every stage"),
        ("write probes", paths.probe_prefix(STATE, RUN), "every run; removed at once"),
        ("backups", backup + "<key>", "promotion, before it replaces or removes `<lake>/<key>`"),
        ("backup claim", paths.backup_claim_object(backup), "the first backup of a run"),
    ]


def layout_section() -> str:
    lines = ["| what | where | written by |", "|---|---|---|"]
    lines += [f"| {what} | `{where}` | {_cell(by)} |" for what, where, by in _layout_rows()]
    return "\n".join(lines)


def state_section() -> str:
    return table(key_docs(PipelineState, {}))


# --- documents --------------------------------------------------------------------------------------

SECTIONS: dict[str, Section] = {"spec-keys": spec_section, "stage-params": stages_section}
FORMAT_SECTIONS: dict[str, Section] = {"lake-layout": layout_section, "state-fields": state_section}
CLI_SECTIONS: dict[str, Section] = {"cli-global": cli_global_section, "cli-commands": cli_commands_section}
# The generated blocks of each document, by file name.
DOCUMENTS: dict[str, dict[str, Section]] = {
    "runspec.md": SECTIONS,
    "cli.md": CLI_SECTIONS,
    "formats.md": FORMAT_SECTIONS,
}
DEFAULT_DOCS = tuple(f"docs/{name}" for name in DOCUMENTS)
_BLOCK = re.compile(
    r"(<!-- BEGIN GENERATED: (?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- END GENERATED: (?P=name) -->)", re.S
)


def render(text: str, sections: Mapping[str, Section] = SECTIONS) -> str:
    """``text`` with every generated block replaced by what the code says now (default: runspec's blocks)."""
    seen: set[str] = set()

    def sub(m: re.Match[str]) -> str:
        name = m.group("name")
        if name not in sections:
            raise DocGenError(f"Unknown generated block {name!r}; known: {', '.join(sections)}")
        seen.add(name)
        return f"{m.group(1)}{sections[name]()}\n{m.group(4)}"

    out = _BLOCK.sub(sub, text)
    if missing := set(sections) - seen:
        raise DocGenError(f"Generated blocks missing from the document: {', '.join(sorted(missing))}")
    return out


def sections_of(path: Path) -> dict[str, Section]:
    """The generated blocks of the document at ``path``, known by its file name."""
    if path.name not in DOCUMENTS:
        raise DocGenError(f"{path}: no generated document is called {path.name}; known: {', '.join(DOCUMENTS)}")
    return DOCUMENTS[path.name]


def main(argv: list[str] | None = None) -> int:
    """``python -m pgx_core.cli.docgen [--write] [DOC ...]``: check (exit 1 on drift) or rewrite the docs."""
    p = argparse.ArgumentParser(prog="python -m pgx_core.cli.docgen", description=__doc__.splitlines()[0])
    p.add_argument(
        "docs", nargs="*", metavar="DOC", default=list(DEFAULT_DOCS),
        help=f"documents to check or rewrite (default: {' '.join(DEFAULT_DOCS)})",
    )  # fmt: skip
    p.add_argument("--write", action="store_true", help="rewrite the generated blocks in place")
    args = p.parse_args(argv)
    stale = []
    for name in args.docs:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        new = render(text, sections_of(path))
        if new == text:
            continue
        if args.write:
            path.write_text(new, encoding="utf-8")
        else:
            stale.append(path)
    for path in stale:
        print(f"{path} is out of date: run python -m pgx_core.cli.docgen --write {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
