"""Run specs: pydantic models of the ``PipelineRun`` document, loading and validation.

A spec is validated in two layers, and every problem of both layers is reported at once:
the document itself (:class:`PipelineRun`), then each stage's ``with:`` block by that stage's own
parameter model (looked up in the stage registry). Problems carry the key path
(``spec.stages[3].with.drugMap``) and what was expected versus found.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from pgx_core.errors import SpecError, SpecProblem
from pgx_core.lake import paths
from pgx_core.lake.schemes import STORES

if TYPE_CHECKING:
    from pgx_core.stage import Stage, StageRegistry

API_VERSION = "pgx.io/v1alpha1"
KIND = "PipelineRun"
DEFAULT_YEARS: tuple[int, ...] = (2016, 2017, 2018, 2019, 2020)
AGE_BANDS = ("0-12", "13-24", "25-44", "45-54", "55-64", "65-74", "75-84", "85-94", "95-114", "unknown")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class CamelModel(BaseModel):
    """Base of every spec model: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class StageParams(CamelModel):
    """Base class of a stage's ``with:`` parameter model. Subclass it in a plugin."""


_NO_PARENT = "must not contain a '..' path segment (it would address storage outside the prefix named)"


def _has_parent_segment(value: str) -> bool:
    """True for a URI of a store's scheme (``s3://``, ``file://``) with a ``..`` segment.

    Storage takes URIs literally (a local path is not normalized first), so ``..`` would reach
    past the prefix the spec names, e.g. out of the lake.
    """
    scheme, sep, rest = value.partition("://")
    return bool(sep) and scheme.lower() in STORES and ".." in rest.split("/")


def _check_uri(value: str, what: str) -> str:
    if value.startswith("s3://"):
        if len(value) <= 5 or value[5] == "/":
            raise ValueError(f"{what} must be s3://BUCKET[/PREFIX], got {value!r}")
    elif value.startswith("file://"):
        if not value.startswith("file:///"):
            raise ValueError(f"{what} must be an absolute file:///PATH, got {value!r}")
    else:
        raise ValueError(f"{what} must start with s3:// or file:///, got {value!r}")
    if _has_parent_segment(value):
        raise ValueError(f"{what} {_NO_PARENT}")
    return value


def _parent_segment_problems(value: Any, path: str) -> list[SpecProblem]:
    """A problem for every URI with a ``..`` segment in ``value``, nested dicts and lists included."""
    if isinstance(value, str):
        return [SpecProblem(path, _NO_PARENT)] if _has_parent_segment(value) else []
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _parent_segment_problems(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [p for i, v in enumerate(value) for p in _parent_segment_problems(v, f"{path}[{i}]")]
    return []


_ENDPOINT_FORM = "must be an http:// or https:// URL with a host, such as http://minio:9000"


def _check_endpoint(value: object) -> str | None:
    """The endpoint URL if it is ``http(s)://HOST[:PORT][/PATH]`` without credentials.

    Messages never echo the value: it may hold a secret.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(_ENDPOINT_FORM)
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0  # .port raises on a non-numeric port
    except ValueError:
        raise ValueError(_ENDPOINT_FORM) from None
    if "@" in parts.netloc:
        raise ValueError(
            "must not contain credentials: credentials come from the standard AWS credential chain only "
            "(environment, shared config, IRSA)"
        )
    if parts.scheme not in {"http", "https"} or not parts.hostname or not port_ok or parts.query or parts.fragment:
        raise ValueError(_ENDPOINT_FORM)
    return value


class Metadata(CamelModel):
    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not _DNS_LABEL.match(v):
            raise ValueError(f"must be a DNS-1123 label (lower-case a-z, 0-9, '-', at most 63), got {v!r}")
        return v


class S3Settings(CamelModel):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    allow_unsafe_store: bool = False

    # Before pydantic's own type check, whose message would quote the value.
    _endpoint = field_validator("endpoint_url", mode="before")(_check_endpoint)


class Partitions(CamelModel):
    years: list[int] = Field(default_factory=lambda: list(DEFAULT_YEARS), min_length=1)
    age_bands: Literal["all"] | list[str] = "all"

    @field_validator("years")
    @classmethod
    def _years(cls, v: list[int]) -> list[int]:
        bad = [y for y in v if not 1900 <= y <= 2100]
        if bad:
            raise ValueError(f"years must lie in 1900-2100, got {bad}")
        return sorted(set(v))

    @field_validator("age_bands")
    @classmethod
    def _bands(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            bad = [b for b in v if b not in AGE_BANDS]
            if bad:
                raise ValueError(f"age bands must be 'all' or a list of {', '.join(AGE_BANDS)}; got {bad}")
        return v

    def bands(self) -> tuple[str, ...]:
        return AGE_BANDS if self.age_bands == "all" else tuple(b for b in AGE_BANDS if b in self.age_bands)


class ExecutorSettings(CamelModel):
    type: Literal["ray", "local"] = "ray"
    address: str | None = None
    max_parallel: int | None = Field(default=None, ge=1)
    memory_budget_mb: int = Field(default=2048, ge=64)
    cpus_per_item: float = Field(default=1.0, gt=0, le=64)


class StageSpec(CamelModel):
    use: str
    name: str | None = None
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")

    @property
    def display_name(self) -> str:
        return self.name or self.use


class Spec(CamelModel):
    lake: str
    state_root: str | None = None
    backup_root: str | None = None
    s3: S3Settings = Field(default_factory=S3Settings)
    partitions: Partitions = Field(default_factory=Partitions)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    limit: int | None = Field(default=None, ge=1)
    lease_ttl_seconds: int = Field(default=60, ge=5, le=3600)
    # pgx controller only: what a new generation of a PipelineRun does while the previous one's
    # Job still runs. Not part of the fingerprint: it does not change what the run computes.
    on_update: Literal["wait", "cancel"] = "wait"
    stages: list[StageSpec] = Field(min_length=1)

    @field_validator("lake")
    @classmethod
    def _lake(cls, v: str) -> str:
        lake = _check_uri(v, "lake")
        if lake.startswith("file://") and not [seg for seg in lake[7:].split("/") if seg not in {"", "."}]:
            raise ValueError("lake must not be the filesystem root; name a directory (file:///data/lake)")
        return lake.rstrip("/")

    @field_validator("state_root", "backup_root")
    @classmethod
    def _roots(cls, v: str | None) -> str | None:
        return None if v is None else _check_uri(v, "URI")

    @model_validator(mode="after")
    def _defaults_and_names(self) -> Spec:
        names = [s.display_name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique within the spec; repeated: {', '.join(dupes)}")
        # Fill the lake-dependent defaults so the canonical form (and its fingerprint) is explicit.
        if self.state_root is None:
            object.__setattr__(self, "state_root", paths.default_state_root(self.lake))
        if self.backup_root is None:
            object.__setattr__(self, "backup_root", paths.default_backup_root(self.lake))
        return self


class PipelineRun(CamelModel):
    api_version: Literal["pgx.io/v1alpha1"]
    kind: Literal["PipelineRun"]
    metadata: Metadata
    spec: Spec


@dataclass(frozen=True)
class ResolvedStage:
    """One stage of a validated spec: its spec entry, its Stage class and its parsed parameters."""

    index: int
    name: str
    use: str
    stage_cls: type[Stage[Any]]
    params: StageParams


@dataclass(frozen=True)
class RunSpec:
    """A fully validated run spec."""

    source: str
    doc: PipelineRun
    stages: tuple[ResolvedStage, ...]

    @property
    def name(self) -> str:
        return self.doc.metadata.name

    @property
    def spec(self) -> Spec:
        return self.doc.spec

    def canonical(self) -> dict[str, Any]:
        """Defaults filled, stage parameters normalized by their models; keys sorted when dumped."""
        data = self.doc.model_dump(
            by_alias=True, mode="json", exclude={"metadata": {"labels", "annotations"}, "spec": {"on_update"}}
        )
        for st in self.stages:
            data["spec"]["stages"][st.index]["with"] = st.params.model_dump(by_alias=True, mode="json")
            data["spec"]["stages"][st.index]["name"] = st.name
        return data

    def fingerprint(self) -> str:
        return "sha256:" + hashlib.sha256(canonical_json(self.canonical()).encode()).hexdigest()

    def select(self, names: list[str]) -> tuple[ResolvedStage, ...]:
        """The stages named (in spec order). Unknown names → :class:`SpecError`."""
        known = {s.name for s in self.stages}
        unknown = [n for n in names if n not in known]
        if unknown:
            problems = [
                SpecProblem("", f"--stage {n!r} is not a stage of this spec; stages: {', '.join(sorted(known))}")
                for n in unknown
            ]
            raise SpecError(self.source, problems)
        return tuple(s for s in self.stages if s.name in names)


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


_USERINFO = re.compile(r"(?<=://)[^/@\s'\"]*@")


def _found(value: Any) -> str:
    # URL credentials are masked: a misplaced value (say an endpoint URL given as ``s3:``) is echoed here.
    text = _USERINFO.sub("***@", repr(value))
    return text if len(text) <= 80 else text[:77] + "..."


def problems_from(err: ValidationError, prefix: str = "") -> list[SpecProblem]:
    """Turn a pydantic error into problems with key paths, expected and found."""
    out: list[SpecProblem] = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        # pydantic puts union branch names in the path (e.g. 'literal['all']'); they mean nothing to users.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "list[str]"})))
        path = prefix + ("." if prefix and loc and not isinstance(loc[0], int) else "") + _loc(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            text = "is required but missing"
        elif e["type"] == "extra_forbidden":
            text = "is not a known key (unknown keys are errors)"
        elif e["type"].startswith("value_error") or e["type"] == "assertion_error":
            text = msg
        else:
            text = f"{msg[0].lower() + msg[1:]}; got {_found(e.get('input'))}"
        out.append(SpecProblem(path, text))
    return out


# A real spec has a few hundred nodes. Past these bounds pydantic, json and error rendering (which
# walk the document with every alias expanded) would take seconds or exhaust memory.
MAX_NODES = 100_000
MAX_DEPTH = 100
_CHARS_PER_NODE = 100  # a long string counts as one node per 100 characters: ~10 MB of text at most


class _Unbounded(Exception):
    pass


def _expanded_size(data: Any) -> int:
    """Nodes of ``data`` with every YAML alias expanded, up to ``MAX_NODES + 1``.

    PyYAML shares one object for an anchor and its aliases, so sizes are memoized by ``id``: the
    work is linear in the document as written, however much the aliases multiply it. Raises
    :class:`_Unbounded` for a collection that contains itself or nesting deeper than ``MAX_DEPTH``.
    """
    sizes: dict[int, int] = {}  # id → expanded size; -1 while the collection is being walked

    def size(node: Any, depth: int) -> int:
        if isinstance(node, str | bytes):
            return 1 + len(node) // _CHARS_PER_NODE
        if not isinstance(node, dict | list):
            return 1
        known = sizes.get(id(node))
        if known == -1:
            raise _Unbounded("contains a recursive alias (a collection that includes itself)")
        if known is not None:
            return known
        if depth > MAX_DEPTH:
            raise _Unbounded(f"nests deeper than {MAX_DEPTH} levels")
        sizes[id(node)] = -1
        total = 1
        for child in [*node.keys(), *node.values()] if isinstance(node, dict) else node:
            total += size(child, depth + 1)
            if total > MAX_NODES:
                break
        sizes[id(node)] = total
        return total

    return size(data, 0)


def parse_yaml(text: str, source: str) -> Any:
    """Parse a spec document; refuse one that would be too large once its aliases are expanded."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(
            source, [SpecProblem("", f"is not valid YAML{where}: {getattr(exc, 'problem', exc)}")]
        ) from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise SpecError(source, [SpecProblem("", f"nests deeper than {MAX_DEPTH} levels")]) from None
    # The messages name no value: the document may be huge, and its values data or secrets.
    try:
        nodes = _expanded_size(data)
    except _Unbounded as exc:
        raise SpecError(source, [SpecProblem("", str(exc))]) from None
    if nodes > MAX_NODES:
        raise SpecError(
            source,
            [
                SpecProblem(
                    "",
                    f"expands to more than {MAX_NODES:,} nodes once its YAML aliases are expanded (a run spec "
                    "has a few hundred); aliases that multiply content are refused",
                )
            ],
        )
    return data


def validate_document(data: Any, source: str, registry: StageRegistry) -> RunSpec:
    """Validate a parsed document; raise :class:`SpecError` with every problem at once."""
    problems: list[SpecProblem] = []
    if not isinstance(data, dict):
        raise SpecError(
            source, [SpecProblem("", f"must be a mapping (a PipelineRun document), got {type(data).__name__}")]
        )
    doc: PipelineRun | None = None
    try:
        doc = PipelineRun.model_validate(data)
    except ValidationError as err:
        problems.extend(problems_from(err))
    # Stage `with:` blocks are checked even when the document has other problems, so that the
    # user sees everything in one go.
    raw_stages = data.get("spec", {}).get("stages") if isinstance(data.get("spec"), dict) else None
    resolved: list[ResolvedStage] = []
    if isinstance(raw_stages, list):
        for i, raw in enumerate(raw_stages):
            if not isinstance(raw, dict) or not isinstance(raw.get("use"), str):
                continue
            use = raw["use"]
            where = f"spec.stages[{i}]"
            stage_cls = registry.get(use)
            if stage_cls is None:
                avail = ", ".join(registry.names()) or "(none installed)"
                problems.append(SpecProblem(f"{where}.use", f"unknown stage type {use!r}; available: {avail}"))
                continue
            with_block = raw.get("with") or {}
            if not isinstance(with_block, dict):
                problems.append(SpecProblem(f"{where}.with", f"must be a mapping, got {type(with_block).__name__}"))
                continue
            try:
                params = stage_cls.Params.model_validate(with_block)
            except ValidationError as err:
                problems.extend(problems_from(err, f"{where}.with"))
                # The raw block then, so these problems come together with the model's.
                problems.extend(_parent_segment_problems(with_block, f"{where}.with"))
                continue
            # Parameter models belong to plugins (third-party ones too): the core walks what they
            # parsed, by camelCase key, so no stage can be pointed outside its prefix.
            parent = _parent_segment_problems(params.model_dump(by_alias=True), f"{where}.with")
            if parent:
                problems.extend(parent)
                continue
            name = raw["name"] if isinstance(raw.get("name"), str) else use
            resolved.append(ResolvedStage(i, name, use, stage_cls, params))
    if doc is not None and not problems:
        # Only a sound document is worth the deeper checks (they may read maps from storage).
        for st in resolved:
            for key, message in st.stage_cls.validate_params(st.params, doc.spec):
                problems.append(SpecProblem(f"spec.stages[{st.index}].with.{key}", message))
    if problems or doc is None:
        raise SpecError(source, problems)
    return RunSpec(source=source, doc=doc, stages=tuple(resolved))


def load_spec(path: str | Path, registry: StageRegistry) -> RunSpec:
    """Read, parse and validate a run spec file (``-`` for standard input)."""
    source = str(path)
    if source == "-":
        import sys  # noqa: PLC0415

        text = sys.stdin.read()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SpecError(source, [SpecProblem("", f"cannot be read: {exc.strerror}")]) from None
    return validate_document(parse_yaml(text, source), source, registry)
