"""The older ``PipelineState`` and ``GlobalPipelineTracker``, as adapters over :mod:`pgx_core.state`.

Both keep their older constructors and methods and write pgx's own formats at pgx's own keys —
``<stateRoot>/pgx-pipeline-status/<pipeline>/<entity>/state.json`` and
``…/<pipeline>/global_tracker.json`` — with compare-and-swap, so concurrent notebooks and pgx runs
never lose an update. The state root is ``state_root`` when given, else the default of
``$PGX_LAKE`` (``s3://pgx-repository`` for an S3 lake, as before; ``<lake>/_state`` for a local
one). What changed, on purpose:

* an entity id's ``/`` and other characters unsafe in keys become ``_`` (``"55-64/2020"`` →
  ``55-64_2020``);
* errors and free-form metadata may hold protected data: errors, and step and completion
  metadata, are stored scrubbed — booleans, counts under count-like keys (``rows``,
  ``final_rows``, ``patients``…) and locations are kept, any other number or text that could be a
  member key, date or raw value is dropped — and the tracker keeps statuses only (its
  ``metadata`` arguments are accepted and not stored);
* a fresh state is ``pending`` (it was ``running``); ``update_entity_status`` records an entity it
  has not seen registered (it used to ignore it).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from pgx_core import clock
from pgx_core.errors import scrub
from pgx_core.lake import paths
from pgx_core.lake.storage import open_store
from pgx_core.state import GlobalTracker, StateStore, Step
from pgx_core.state import PipelineState as StateDoc

STATUSES = ("pending", "running", "completed", "failed")


def _state_root(state_root: str | None) -> str:
    return state_root or paths.default_state_root(paths.default_lake())


# Keys whose numbers are counts or measures (kept); any other number may be a key, date or ZIP.
_COUNT_KEY = re.compile(r"(rows|count|records|lines|bytes|files|objects|patients|members|seconds|duration|size)$")


def _safe(metadata: dict[str, Any] | None) -> dict[str, Any]:
    """Metadata fit for state: booleans, and numbers under a count-like key (``rows``,
    ``final_rows``, ``patients``…), as they are; everything else (keys too) as scrubbed text."""
    out: dict[str, Any] = {}
    for key, value in (metadata or {}).items():
        name = scrub(str(key))
        counted = isinstance(value, int | float) and _COUNT_KEY.search(name.lower()) is not None
        out[name] = value if isinstance(value, bool) or counted else scrub(str(value))
    return out


class PipelineState:
    """Step checkpoints of one entity of a pipeline (``state.json``)."""

    def __init__(
        self, pipeline_name: str, entity_id: str, logger: logging.Logger | None = None, *, state_root: str | None = None
    ) -> None:
        root = _state_root(state_root)
        self.pipeline_name = pipeline_name
        self.entity_id = paths.safe_id(entity_id)
        self.logger = logger or logging.getLogger(__name__)
        self._states = StateStore(open_store(root), root, pipeline_name)

    @property
    def state(self) -> StateDoc:
        """The entity's state as stored now (a fresh pending one when there is none)."""
        return self._states.read(self.entity_id) or StateDoc(pipeline_name=self.pipeline_name, entity_id=self.entity_id)

    def is_step_completed(self, step_name: str) -> bool:
        return any(s.step_name == step_name for s in self.state.completed_steps)

    def mark_step_completed(self, step_name: str, metadata: dict[str, Any] | None = None) -> None:
        def add(st: StateDoc) -> StateDoc | None:
            if any(s.step_name == step_name for s in st.completed_steps):
                return None
            st.completed_steps.append(Step(step_name=step_name, completed_at=clock.iso(), metadata=_safe(metadata)))
            return st

        self._states.update(self.entity_id, add)

    def mark_step_failed(self, step_name: str, error: str) -> None:
        message = scrub(str(error))

        def fail(st: StateDoc) -> StateDoc:
            failed = [*(getattr(st, "failed_steps", None) or [])]
            failed.append({"step_name": step_name, "failed_at": clock.iso(), "error": message})
            return st.model_copy(update={"status": "failed", "error": message, "failed_steps": failed})

        self._states.update(self.entity_id, fail)

    def mark_pipeline_completed(self, metadata: dict[str, Any] | None = None) -> None:
        def complete(st: StateDoc) -> StateDoc:
            return st.model_copy(update={"status": "completed", "metrics": {**st.metrics, **_safe(metadata)}})

        self._states.update(self.entity_id, complete)

    def get_progress(self) -> dict[str, Any]:
        st = self.state
        return {
            "pipeline_name": self.pipeline_name,
            "entity_id": self.entity_id,
            "status": st.status,
            "completed_steps": len(st.completed_steps),
            "failed_steps": len(getattr(st, "failed_steps", None) or []),
            "step_names": [s.step_name for s in st.completed_steps],
        }

    def reset(self) -> None:
        """Start the entity over: a fresh state, every step to be done again."""
        fresh = StateDoc(pipeline_name=self.pipeline_name, entity_id=self.entity_id)
        self._states.update(self.entity_id, lambda _old: fresh.model_copy())

    @staticmethod
    def check_output_exists(s3_path: str) -> bool:
        return open_store(s3_path).exists(s3_path)


class GlobalPipelineTracker:
    """Status of every entity of a pipeline (``global_tracker.json``)."""

    def __init__(
        self, pipeline_name: str, logger: logging.Logger | None = None, *, state_root: str | None = None
    ) -> None:
        root = _state_root(state_root)
        self.pipeline_name = pipeline_name
        self.logger = logger or logging.getLogger(__name__)
        self._tracker = GlobalTracker(open_store(root), root, pipeline_name)

    def register_entity(self, entity_id: str, metadata: dict[str, Any] | None = None) -> None:
        """Record the entity as pending unless it is known already."""
        self._tracker.set_status({paths.safe_id(entity_id): "pending"}, keep_existing=True)

    def update_entity_status(self, entity_id: str, status: str, metadata: dict[str, Any] | None = None) -> None:
        self._tracker.set_status({paths.safe_id(entity_id): status})

    def get_summary(self) -> dict[str, Any]:
        entities: dict[str, str] = self._tracker.read().get("entities", {})
        counts = {s: sum(1 for v in entities.values() if v == s) for s in STATUSES}
        return {
            "pipeline_name": self.pipeline_name,
            "total_entities": len(entities),
            **counts,
            "entities": sorted(entities),
        }


__all__ = ["GlobalPipelineTracker", "PipelineState"]
