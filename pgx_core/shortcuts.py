"""Seed-compatible shortcuts: older scripts' flags mapped onto a one-stage run.

Each shortcut builds a ``PipelineRun`` document (the mapping lives with its plugin), which is then
validated and run exactly like ``pgx run`` would: same state, resume, promotion and summaries.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import yaml

from pgx_core.exitcodes import ExitCode
from pgx_core.pluginmanager import make_plugin_manager
from pgx_core.runner import Runner
from pgx_core.runspec import validate_document


def run_document(doc: dict[str, Any], args: argparse.Namespace, *, source: str, resume: bool = True) -> int:
    """Validate and run a generated spec; ``--print-spec`` shows it instead."""
    if getattr(args, "print_spec", False):
        print(yaml.safe_dump(doc, sort_keys=False), end="")
        return ExitCode.OK
    plugins = make_plugin_manager()
    spec = validate_document(doc, source, plugins.registry)
    runner = Runner(spec, plugins, resume=resume, executor=getattr(args, "executor", None))
    code = runner.execute()
    if runner.error:
        print(f"pgx: {runner.error}", file=sys.stderr)
    for s in runner.summaries:
        print(f"summary: {s}", file=sys.stdout)
    return int(code)
