"""The contract a stage plugin implements, and the registry of stage types.

A :class:`Stage` declares who it is (type name, tx, script_name, version, parameter model), plans
its entities on the driver and processes one entity at a time on a worker. Everything else —
state, leases, staging, validation gates, promotion, backup, summaries, retries — belongs to the
core (:mod:`pgx_core.run.runner`): a stage writes only to the staging URIs the core gives it and never
writes a final lake object itself.
"""

from __future__ import annotations

import abc
import hashlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pgx_core.errors import ConservationError, DataError, NoInput, PluginError
from pgx_core.lake import paths
from pgx_core.lake.promote import HashingWriter
from pgx_core.log import get_logger
from pgx_core.spec.runspec import AGE_BANDS, StageParams, canonical_json

if TYPE_CHECKING:
    import pyarrow as pa

    from pgx_core.lake.storage import ObjectInfo, ObjectStore, StoreConfig
    from pgx_core.run.executor import StopFlag
    from pgx_core.spec.runspec import Spec

P = TypeVar("P", bound=StageParams)
log = get_logger(__name__)


@dataclass(frozen=True)
class Entity:
    """One unit of work a stage tracks state for.

    ``id`` is unique within the stage and path-safe (the core prefixes the lake key).
    ``input_fingerprint`` changes whenever the entity's inputs change (content fingerprints,
    checksums or etags of what it reads). ``payload`` is whatever ``process`` needs (JSON-able).
    """

    id: str
    input_fingerprint: str
    payload: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0
    config_extra: str = ""


@dataclass(frozen=True)
class Output:
    """An object a stage produced in staging, to be promoted to ``uri``.

    ``kind`` is ``data`` for the stage's main output; ``rejects``/``quarantine``/``report`` for
    the others. ``promote_on_failure`` marks outputs promoted even when a gate fails (ingest's
    rejects stay inspectable).
    """

    uri: str
    rows: int
    kind: str = "data"
    promote_on_failure: bool = False
    # When this output rewrites in place an object another stage produced (reprocess rewrites
    # ingest's rejects, update-codes rewrites clean's gold): ``(script_name, entity id)`` of that
    # stage's entity. The core records the new checksum there, so that stage's resume still
    # accepts the object.
    rewrites: tuple[str, str] | None = None


@dataclass
class EntityResult:
    """What processing one entity produced. Counts are aggregate integers only (no PHI)."""

    outputs: list[Output] = field(default_factory=list)
    rows_in: int = 0
    rows_out: int = 0
    rows_quarantined: int = 0
    rows_out_of_scope: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    # A PHI-free message when a data gate failed; nothing but promote_on_failure outputs is promoted.
    data_error: str | None = None
    # Outputs the stage decided not to write (e.g. nothing changed in a pass-2 rewrite): the
    # final objects stay as they are and are recorded with their current checksums.
    unchanged: list[str] = field(default_factory=list)
    # Final objects that must no longer exist (e.g. a stale rejects object after a source file was
    # fixed). The core backs them up, then deletes them, as part of promotion.
    deletes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Data:
    """Lake data a stage reads or writes, by zone and data type: ``Data("silver", "pharmacy")``."""

    zone: str
    data_type: str

    def __str__(self) -> str:
        return f"{self.zone}/{self.data_type}"


@dataclass(frozen=True)
class RunInfo:
    """Run-wide facts a stage may use on the driver and on workers (picklable)."""

    run_id: str
    run_name: str
    lake: str
    state_root: str
    backup_root: str
    store_config: StoreConfig
    years: tuple[int, ...]
    age_bands: tuple[str, ...]
    memory_budget_mb: int
    max_parallel: int | None
    limit: int | None
    ray_address: str | None = None
    cpus_per_item: float = 1.0
    # Which stage produces what (``"silver/pharmacy"`` → its state pipeline, the script name), of
    # every registered stage: see :meth:`Stage.producer`.
    producers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Spec, run_id: str, run_name: str, producers: Mapping[str, str] | None = None) -> RunInfo:
        from pgx_core.lake.storage import StoreConfig  # noqa: PLC0415

        assert spec.state_root is not None and spec.backup_root is not None
        return cls(
            run_id=run_id,
            run_name=run_name,
            lake=spec.lake,
            state_root=spec.state_root,
            backup_root=spec.backup_root,
            store_config=StoreConfig.for_spec(spec.s3),
            years=tuple(spec.partitions.years),
            age_bands=spec.partitions.bands(),
            memory_budget_mb=spec.executor.memory_budget_mb,
            max_parallel=spec.executor.max_parallel,
            limit=spec.limit,
            ray_address=spec.executor.address,
            cpus_per_item=spec.executor.cpus_per_item,
            producers=dict(producers or {}),
        )


class WorkContext:
    """Given to :meth:`Stage.process`: where to write, how to read, how to stay alive."""

    def __init__(
        self,
        run: RunInfo,
        entity_id: str,
        store_for: Callable[[str], ObjectStore],
        heartbeat: Callable[[], None] | None = None,
        stop_requested: StopFlag | None = None,
    ) -> None:
        self.run = run
        self.entity_id = entity_id
        self._store_for = store_for
        self._heartbeat = heartbeat
        self.stop_requested: StopFlag = stop_requested or threading.Event()
        self.checksums: dict[str, str] = {}

    def store(self, uri: str | None = None) -> ObjectStore:
        """The object store holding ``uri`` (default: the lake)."""
        return self._store_for(uri or self.run.lake)

    def staging_uri(self, final_uri: str) -> str:
        """Where to write the staged version of ``final_uri`` (promotion moves it there)."""
        return paths.staging_object(self.run.lake, self.run.run_id, final_uri)

    def scratch_uri(self, *parts: str) -> str:
        """A run-scoped scratch location under staging for intermediates (cleaned up with it)."""
        return paths.join(paths.staging_root(self.run.lake, self.run.run_id), "_scratch", *parts)

    def open_output(self, uri: str) -> HashingWriter:
        """Open a staging object for writing; its sha256 is computed on the way (no re-read later)."""

        def done(checksum: str, _size: int) -> None:
            self.checksums[uri] = checksum

        return HashingWriter(self.store(uri).open_output(uri), done)

    def heartbeat(self) -> None:
        """Call from long loops: renews the entity's lease (raises if it was taken over)."""
        if self._heartbeat is not None:
            self._heartbeat()


class Stage(abc.ABC, Generic[P]):
    """Base class of every stage. Subclasses set the class attributes and implement two methods."""

    type_name: ClassVar[str]  # the `use:` name, e.g. "ingest"
    tx: ClassVar[str]  # short transaction code, e.g. "txtpq"
    script_name: ClassVar[str]  # summary path and state pipeline name, e.g. "txt_to_parquet"
    version: ClassVar[str]  # bump when outputs change for the same inputs and parameters
    plugin_name: ClassVar[str]  # distribution name shown in summaries, e.g. "pgx-ingest"
    Params: ClassVar[type[StageParams]]
    # True when only ``prepare`` learns which entities have input rows (see :meth:`has_input`).
    input_known_after_prepare: ClassVar[bool] = False
    # What the stage reads and what it writes. A stage that fingerprints its input by what the
    # producer recorded, or records an in-place rewrite in the producer's state, asks
    # :meth:`producer` for it instead of naming another plugin's stage.
    consumes: ClassVar[tuple[Data, ...]] = ()
    produces: ClassVar[tuple[Data, ...]] = ()

    def __init__(self, params: P, run: RunInfo, store_for: Callable[[str], ObjectStore]) -> None:
        self.params = params
        self.run = run
        self.store_for = store_for

    def producer(self, data: Data) -> str:
        """The state pipeline (script name) of the stage that produces ``data``, whichever plugin
        registered it. None registered → :class:`PluginError` naming the data."""
        found = self.run.producers.get(str(data))
        if found is None:
            raise PluginError(f"Stage {self.type_name} reads {data}, which no installed stage produces")
        return found

    # --- validation ---------------------------------------------------------------------------
    @classmethod
    def validate_params(cls, params: P, spec: Spec) -> list[tuple[str, str]]:
        """Checks that need the whole spec or I/O (e.g. loading and checking a drug map).

        Called by spec validation after ``params`` parsed. Returns ``(key, message)`` pairs; the
        key is the ``with:`` key (camelCase) the problem is about. Runs in: driver.
        """
        return []

    # --- driver side ----------------------------------------------------------------------------
    @abc.abstractmethod
    def plan(self) -> list[Entity]:
        """List this stage's entities, in a deterministic order. Runs in: driver. Writes nothing."""

    def config_fingerprint(self) -> str:
        """Fingerprint of everything besides inputs that shapes the outputs."""
        blob = canonical_json(
            {"stage": self.type_name, "version": self.version, "params": self.params.model_dump(mode="json")}
        )
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()

    def prepare(self, entities: list[Entity], fan_out: Callable[..., Iterator[Any]]) -> None:
        """Optional driver-side work before the entities run (e.g. a shuffle).

        ``fan_out(fn, items)`` runs ``fn(item)`` for each item on the executor and yields results.
        Only called when at least one entity will run. Intermediates go under ``scratch_uri``.
        """

    def has_input(self, entity: Entity) -> bool:
        """Whether ``entity`` has input rows to process; asked after :meth:`prepare` of a run with
        ``--limit N`` when ``input_known_after_prepare`` is set, so that the N entities that run
        have something to write. Runs in: driver."""
        return True

    # --- worker side ----------------------------------------------------------------------------
    @abc.abstractmethod
    def process(self, entity: Entity, ctx: WorkContext) -> EntityResult:
        """Process one entity, writing outputs to ``ctx.staging_uri(final)``. Runs in: worker."""

    def check(self, entity: Entity, result: EntityResult) -> None:
        """Gates run before promotion. Default: rows in = out + quarantined + out of scope."""
        accounted = result.rows_out + result.rows_quarantined + result.rows_out_of_scope
        if result.rows_in != accounted:
            raise ConservationError(
                f"Row conservation broken for {self.type_name} entity {entity.id}: rows in {result.rows_in} "
                f"!= out {result.rows_out} + quarantined {result.rows_quarantined} "
                f"+ out of scope {result.rows_out_of_scope}"
            )

    def output_schema(self, output: Output) -> pa.Schema | None:
        """Expected Arrow schema of a Parquet output (checked before promotion), or None."""
        return None


class StageRegistry:
    """Stage types by name. Plugins add theirs through ``pgx_register_stages(registry)``."""

    def __init__(self) -> None:
        self._stages: dict[str, type[Stage[Any]]] = {}
        self._owners: dict[str, str] = {}
        self._producers: dict[str, type[Stage[Any]]] = {}
        self._current_plugin = "?"

    def register(self, stage_cls: type[Stage[Any]]) -> None:
        """Add a Stage class; a second class for the same type name is an error naming both plugins."""
        for attr in ("type_name", "tx", "script_name", "version", "plugin_name", "Params"):
            if not hasattr(stage_cls, attr):
                raise PluginError(
                    f"Plugin {self._current_plugin}: stage class {stage_cls.__qualname__} "
                    f"lacks required attribute {attr!r}"
                )
        name = stage_cls.type_name
        if name in self._stages and self._stages[name] is not stage_cls:
            raise PluginError(
                f"Stage type {name!r} is registered twice: by plugin {self._owners[name]} "
                f"({self._stages[name].__qualname__}) and by plugin {self._current_plugin} ({stage_cls.__qualname__})"
            )
        for data in stage_cls.produces:
            other = self._producers.get(str(data))
            if other is not None and other is not stage_cls:
                raise PluginError(
                    f"Plugin {self._current_plugin}: stage {name} produces {data}, which stage "
                    f"{other.type_name} (plugin {self._owners[other.type_name]}) produces already"
                )
        self._stages[name] = stage_cls
        self._owners[name] = self._current_plugin
        self._producers.update((str(data), stage_cls) for data in stage_cls.produces)

    def get(self, name: str) -> type[Stage[Any]] | None:
        return self._stages.get(name)

    def names(self) -> list[str]:
        return sorted(self._stages)

    def owner(self, name: str) -> str:
        return self._owners[name]

    def items(self) -> list[tuple[str, type[Stage[Any]]]]:
        return sorted(self._stages.items())

    def producers(self) -> dict[str, str]:
        """``{"silver/pharmacy": "global_imputation", …}``: each produced data's state pipeline."""
        return {data: cls.script_name for data, cls in sorted(self._producers.items())}


def scan_partitions(store: ObjectStore, prefix: str, file_name: str, what: str) -> dict[tuple[str, int], ObjectInfo]:
    """The partition objects under ``prefix`` by ``(age_band, event_year)``: the objects at
    ``age_band=<band>/event_year=<year>/<file_name>``, for the age bands pgx knows.

    A stage reading a zone never ignores what it finds there in silence: no object at all is
    :class:`NoInput` (naming ``prefix``); objects of which none is in that layout is a
    :class:`DataError` naming the layout and one of them; objects outside the layout beside
    readable ones are logged (how many, and one of them), never read. ``what`` names the reader.
    """
    found: dict[tuple[str, int], ObjectInfo] = {}
    odd: list[str] = []
    for info in store.list(prefix):
        rel = paths.relative(info.uri, prefix)
        part = paths.partition_of(rel, file_name)
        if part is not None and part[0] in AGE_BANDS:
            found[part] = info
        elif not rel.endswith("/"):  # a directory marker some tools write: not an object
            odd.append(rel)
    layout = f"age_band=<band>/event_year=<year>/{file_name}"
    if not found and not odd:
        raise NoInput(f"{what} found no object under {prefix}")
    if not found:
        raise DataError(
            f"{what} found {len(odd)} objects under {prefix} but none in the layout it reads ({layout}), e.g. {odd[0]}"
        )
    if odd:
        log.warning(
            "objects outside the partition layout are not read",
            extra={
                "event": "objects_not_read",
                "prefix": prefix,
                "layout": layout,
                "count": len(odd),
                "example": odd[0],
            },
        )
    return found
