"""Migration aid: the older scripts' helper modules, as thin adapters over pgx.

Notebooks written for the older pipeline import ``helpers_1997_13.s3_utils`` (path helpers,
``backup_s3_prefix``) and ``helpers_1997_13.pipeline_state`` (``PipelineState``,
``GlobalPipelineTracker``). These modules keep those names and signatures and call pgx's own code
(:mod:`pgx_core.lake.paths`, :mod:`pgx_core.lake.backup`, :mod:`pgx_core.state`): the behaviour is pgx's —
canonical paths, create-only backup prefixes, compare-and-swap state writes. New code should use
the pgx modules directly; docs/migrating.md lists what changed.
"""
