"""The ``pgx`` command line. Parses arguments, calls the runtime, maps errors to exit codes.

No business logic lives here. Human output goes to stdout, with progress and readable log lines on
stderr when it is a terminal (:mod:`pgx_core.cli.ui`); ``--json`` prints one JSON document instead,
and logs are JSON lines on stderr off a terminal or with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from pgx_core import __version__, log
from pgx_core.cli.ui import Ui, make_ui
from pgx_core.errors import ArgumentError, PgxError, SpecError, UsageError, scrub
from pgx_core.exitcodes import ExitCode

if TYPE_CHECKING:
    from pgx_core.pluginmanager import Plugins

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, doc: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(doc, indent=1, default=str))
    else:
        human()


def _plugins_and_spec(args: argparse.Namespace, path: str) -> tuple[Plugins, Any]:
    from pgx_core.spec.runspec import load_spec  # noqa: PLC0415

    plugins: Plugins = args.plugins
    try:
        spec = load_spec(path, plugins.registry)
    except SpecError as err:
        note = plugins.failure_note()
        if note and any("unknown stage type" in p.message for p in err.problems):
            from pgx_core.errors import SpecProblem  # noqa: PLC0415

            err = SpecError(err.source, [*err.problems, SpecProblem("", note)])
        raise err from None
    return plugins, spec


# --- commands ---------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    _, spec = _plugins_and_spec(args, args.spec)
    doc = {"valid": True, "spec": args.spec, "fingerprint": spec.fingerprint()}
    if args.show:
        doc["normalized"] = spec.canonical()

    def human() -> None:
        print(f"{args.spec}: valid ({len(spec.stages)} stages, {spec.fingerprint()})")
        if args.show:
            import yaml  # noqa: PLC0415

            print(yaml.safe_dump(spec.canonical(), sort_keys=True), end="")

    _emit(args, doc, human)
    return ExitCode.OK


def cmd_plugins(args: argparse.Namespace) -> int:
    plugins: Plugins = args.plugins
    rows: list[dict[str, Any]] = [
        {
            "name": i.name,
            "distribution": i.distribution,
            "version": i.version,
            "stages": list(i.stages),
            "error": i.error,
        }
        for i in plugins.infos
    ]

    def human() -> None:
        for r in rows:
            if r["error"]:
                print(f"{r['name']:<14} {r['distribution']} {r['version']}  FAILED TO LOAD: {r['error']}")
            else:
                print(f"{r['name']:<14} {r['distribution']} {r['version']}  stages: {', '.join(r['stages']) or '-'}")
        for name, cls in plugins.registry.items():
            sides = (("reads", cls.consumes), ("writes", cls.produces))
            io = "".join(f"  {k} {', '.join(map(str, v))}" for k, v in sides if v)
            print(f"  {name:<18} tx={cls.tx:<6} script_name={cls.script_name}{io}")

    stage_types = [
        {
            "type": name,
            "script_name": cls.script_name,
            "consumes": [str(d) for d in cls.consumes],
            "produces": [str(d) for d in cls.produces],
        }
        for name, cls in plugins.registry.items()
    ]
    _emit(args, {"plugins": rows, "stage_types": stage_types}, human)
    return ExitCode.OK


def _runner(args: argparse.Namespace, **kw: Any) -> Any:
    from pgx_core.run.runner import Runner  # noqa: PLC0415

    plugins, spec = _plugins_and_spec(args, args.spec)
    return Runner(spec, plugins, stages=getattr(args, "stage", None) or None, **kw)


def _show_plan(args: argparse.Namespace, runner: Any) -> int:
    plans = runner.plan()
    doc = {
        "run_name": runner.spec.name,
        "stages": [
            {
                "stage": p.stage.name,
                "type": p.stage.use,
                "run": [{"entity": d.state_entity, "reason": d.reason} for d in p.to_run],
                "skip": [{"entity": d.state_entity, "reason": d.reason} for d in p.skipped],
                "deferred": [{"entity": d.state_entity, "reason": d.reason} for d in p.deferred],
                "limit_picks_after_prepare": p.picks_after_prepare,
            }
            for p in plans
        ],
        "note": "later stages are planned against the lake as it is now; earlier stages may add entities",
    }

    def human() -> None:
        for p in plans:
            later = f", {len(p.deferred)} left for a later run (--limit {p.limit})" if p.deferred else ""
            print(f"stage {p.stage.name} ({p.stage.use}): {len(p.to_run)} to run, {len(p.skipped)} skipped{later}")
            if p.picks_after_prepare:
                print(f"  (--limit {p.limit}: the run picks the first entities that its preparation finds rows for)")
            for d in p.to_run:
                print(f"  run   {d.state_entity}  ({d.reason})")
            for d in p.skipped:
                print(f"  skip  {d.state_entity}  ({d.reason})")

    _emit(args, doc, human)
    return ExitCode.OK


def cmd_plan(args: argparse.Namespace) -> int:
    return _show_plan(args, _runner(args, resume=not args.no_resume, limit=args.limit))


MAX_LISTED_OUTPUTS = 5


def _stage_lines(tally: Any) -> list[str]:
    """What one stage did, in words: counts, what the limit left, and the first outputs written."""
    t = tally.totals
    empty = f"{tally.without_input} without input rows wait for a run without --limit"
    if tally.error and not t["entities"]:
        return [f"stage {tally.name}: ended before any entity ran"]
    if not (t["entities"] or tally.deferred or tally.without_input):
        return [f"stage {tally.name}: nothing in scope, no input matched the run's partitions"]
    if not (t["completed"] or t["failed"] or t["locked"] or tally.deferred or tally.error):
        if not tally.without_input:
            return [f"stage {tally.name}: nothing to do, all {t['skipped']} entities were already completed"]
        return [f"stage {tally.name}: nothing to do with --limit, every entity with input rows is done; {empty}"]
    done = [f"{t['completed']} completed", f"{t['skipped']} already done"]
    done += [f"{t[k]} {k}" for k in ("failed", "locked") if t[k]]
    line = f"stage {tally.name}: " + ", ".join(done)
    if tally.limit is not None:
        line += f"; {tally.deferred} more left for a later run (--limit {tally.limit})"
        if tally.without_input:
            line += f"; {empty}"
    lines = [line]
    lines += [f"  wrote {uri}" for uri in tally.outputs[:MAX_LISTED_OUTPUTS]]
    if len(tally.outputs) > MAX_LISTED_OUTPUTS:
        lines.append(f"  … and {len(tally.outputs) - MAX_LISTED_OUTPUTS} more objects (--json lists them all)")
    return lines


def _hints(spec: str | None, runner: Any, code: int) -> list[str]:
    """The next commands worth trying after a run, by how it ended."""
    lake = runner.run.lake
    report = f"pgx report {runner.run_id} --lake {lake}"
    status = f"pgx status {spec}" if spec else None
    rerun = f"pgx run {spec}" if spec else "the same command again"
    done = sum(t.totals["completed"] + t.totals["failed"] for t in runner.tallies)
    if code == ExitCode.OK and not done:
        return [f"pgx plan {spec}  (why each entity is skipped)" if spec else "nothing was left to do"]
    if code == ExitCode.OK:
        return [f"{report}  (an HTML report of this run)", *([status] if status else [])]
    if code == ExitCode.DATA:
        return [f"{report}  (the failed entities and why)", *([status] if status else [])]
    if code == ExitCode.CONFLICT:
        return [f"{status}  (what another run holds)" if status else f"{rerun} when the other run ends"]
    return [f"{rerun}  (resumes where this run stopped)"]


def _termination_message(runner: Any, code: int) -> None:
    """In a Kubernetes container: the result where the pod's status keeps it (pgx controller reads it)."""
    from pgx_core.k8s import termination  # noqa: PLC0415
    from pgx_core.lake import paths  # noqa: PLC0415

    stages = [(t.name, t.totals) for t in runner.tallies]
    termination.write(termination.message(runner.run_id, code, stages, paths.summaries_prefix(runner.run.lake)))


def _execute(args: argparse.Namespace, make_runner: Callable[..., Any]) -> int:
    """Run with SIGTERM/SIGINT as a clean stop, progress on a terminal, and a closing report."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.get_logger("cli").warning(
            "stop requested", extra={"event": "signal", "signal": signal.Signals(signum).name}
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    ui: Ui = args.ui
    runner = make_runner(stop=stop, **ui.runner_hooks())
    code = runner.execute()
    ui.close()
    if runner.error:
        print(f"pgx: {runner.error}", file=sys.stderr)
    doc = {
        "run_id": runner.run_id,
        "exit_code": int(code),
        "summaries": runner.summaries,
        "stages": [
            {
                "stage": t.name,
                "totals": t.totals,
                "limit": t.limit,
                "deferred": t.deferred,
                "without_input": t.without_input,
                "outputs": t.outputs,
            }
            for t in runner.tallies
        ],
    }

    _termination_message(runner, code)

    def human() -> None:
        lines = [line for t in runner.tallies for line in _stage_lines(t)]
        lines += [f"summary: {s}" for s in runner.summaries]
        title = f"run {runner.run_id} finished: exit {int(code)} ({ExitCode(code).name.lower()})"
        ui.panel(title, lines, _hints(getattr(args, "spec", None), runner, code), ok=code == ExitCode.OK)

    _emit(args, doc, human)
    return int(code)


def cmd_run(args: argparse.Namespace) -> int:
    return _execute(
        args,
        lambda **kw: _runner(args, resume=not args.no_resume, limit=args.limit, executor=args.executor, **kw),
    )


def cmd_status(args: argparse.Namespace) -> int:
    from pgx_core.cli.status import stage_status  # noqa: PLC0415

    runner = _runner(args)
    rows = stage_status(runner)

    def human() -> None:
        for r in rows:
            c = r["counts"]
            print(
                f"{r['stage']:<20} completed {c['completed']:>5}  failed {c['failed']:>5}  "
                f"pending {c['pending']:>5}  locked {c['locked']:>5}  last runs: {', '.join(r['last_run_ids']) or '-'}"
            )

    _emit(args, {"stages": rows}, human)
    return ExitCode.OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from pgx_core.run.rollback import rollback_run  # noqa: PLC0415

    runner = _runner(args)
    report = rollback_run(runner.spec, args.run_id, runner.lake_store, runner.state_store)
    doc = {
        "run_id": report.run_id,
        "backup_prefix": report.backup_prefix,
        "restored": report.restored,
        "states_updated": report.states_updated,
    }

    def human() -> None:
        print(f"rolled back run {report.run_id}: restored {len(report.restored)} objects from {report.backup_prefix}")

    _emit(args, doc, human)
    return ExitCode.OK


def cmd_backup(args: argparse.Namespace) -> int:
    from pgx_core.lake.backup import backup_s3_prefix  # noqa: PLC0415
    from pgx_core.lake.storage import StoreConfig  # noqa: PLC0415

    prefix = backup_s3_prefix(args.src_prefix, args.backup_root, StoreConfig.resolve(args.endpoint_url, args.region))
    _emit(args, {"backup_prefix": prefix}, lambda: print(prefix))
    return ExitCode.OK


def cmd_init(args: argparse.Namespace) -> int:
    from pgx_core.cli.project import init_project  # noqa: PLC0415

    spec_path, doc = init_project(args.dir, args.plugins, sample_rows=args.sample_rows)
    stages = [s.get("name", s["use"]) for s in doc["spec"]["stages"]]
    out = {"spec": str(spec_path), "lake": doc["spec"]["lake"], "stages": stages, "sample_rows": args.sample_rows}

    def human() -> None:
        raw = spec_path.parent / "lake" / "raw"
        lines = [f"spec:   {spec_path}", f"lake:   {out['lake']}", f"readme: {spec_path.parent / 'README.md'}"]
        lines.append(f"stages: {', '.join(stages)}")
        hints = [] if args.sample_rows else [f"put extracts under {raw}/pharmacy and {raw}/medical (see the README)"]
        args.ui.panel(f"pgx project in {spec_path.parent}", lines, [*hints, f"pgx run {spec_path}"], ok=True)

    _emit(args, out, human)
    return ExitCode.OK


def cmd_demo(args: argparse.Namespace) -> int:
    from pgx_core.cli.project import run_demo  # noqa: PLC0415

    return run_demo(args.dir, args.plugins, rows=args.rows, executor=args.executor, as_json=args.json, ui=args.ui)


def cmd_shortcut(args: argparse.Namespace) -> int:
    """A seed-compatible shortcut: the older script's flags as a one-stage run spec, run as ``pgx run``."""
    import yaml  # noqa: PLC0415

    from pgx_core.cli.shortcuts import notes  # noqa: PLC0415
    from pgx_core.run.runner import Runner  # noqa: PLC0415
    from pgx_core.spec.runspec import validate_document  # noqa: PLC0415

    shortcut = args.command_def.shortcut
    for note in notes(shortcut, args):
        print(note, file=sys.stderr)
    doc = shortcut.build_spec(args)
    if args.print_spec:
        print(yaml.safe_dump(doc, sort_keys=False), end="")
        return ExitCode.OK
    plugins = args.plugins
    spec = validate_document(doc, f"pgx {args.command}", plugins.registry)

    def make_runner(**kw: Any) -> Runner:
        return Runner(spec, plugins, resume=not args.no_resume, executor=args.executor, **kw)

    if getattr(args, "plan_only", False):
        return _show_plan(args, make_runner())
    return _execute(args, make_runner)


def _plugin_command(args: argparse.Namespace) -> int:
    run = args.command_def.run
    assert run is not None  # a command without one is a shortcut
    return int(run(args))


def cmd_controller(args: argparse.Namespace) -> int:
    from pgx_core.k8s.controller import main as controller_main  # noqa: PLC0415

    return controller_main(args.namespace, args.image, args.metrics_port)


def cmd_runs(args: argparse.Namespace) -> int:
    from pgx_core.k8s import runs  # noqa: PLC0415

    api, namespace = runs.connect(args.namespace)
    if args.action == "logs":  # text only, as it arrives: there is no document to print
        for text in runs.log_text(api, namespace, args.name, follow=args.follow, tail=args.tail):
            sys.stdout.write(text)
            sys.stdout.flush()
            if getattr(sys.stdout, "closed_by_reader", False):  # `pgx runs logs NAME -f | head`
                break
        return ExitCode.OK
    if args.action == "get":
        run = runs.get_run(api, namespace, args.name)
        _emit(args, runs.run_doc(run), lambda: print("\n".join(runs.describe(run))))
        return ExitCode.OK
    found = runs.list_runs(api, namespace)

    def human() -> None:
        print("\n".join(runs.table(found)) if found else f"no PipelineRuns in namespace {namespace}")

    _emit(args, {"runs": [runs.run_doc(r) for r in found]}, human)
    return ExitCode.OK


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path  # noqa: PLC0415

    from pgx_core.cli.report import build_report, default_out_dir, resolve_run  # noqa: PLC0415

    lake, run_id, config = resolve_run(args.target, args.lake)
    out = Path(args.out) if args.out else default_out_dir(run_id)
    paths_ = build_report(lake, run_id, out, config)
    doc = {"run_id": run_id, "lake": lake, "html": str(paths_.html), "pngs": [str(p) for p in paths_.pngs]}
    _emit(args, doc, lambda: print(paths_.html))
    return ExitCode.OK


def cmd_render(args: argparse.Namespace) -> int:
    from pgx_core.k8s.render import (  # noqa: PLC0415
        DEFAULT_IMAGE,
        RayClusterSettings,
        render_rayjob,
        render_run,
        to_yaml,
    )

    sized = args.workers is not None or args.max_workers is not None
    if sized and args.target != "rayjob":
        raise ArgumentError("pgx render: --workers and --max-workers size the cluster of --target rayjob only")
    if (args.ray_address or args.ray_token_secret) and args.target != "job":
        raise ArgumentError(
            "pgx render: --ray-address and --ray-token-secret are for --target job (a RayJob makes its own cluster)"
        )
    _, spec = _plugins_and_spec(args, args.spec)
    image = args.image or DEFAULT_IMAGE
    if args.target == "rayjob":
        workers = RayClusterSettings().worker_replicas if args.workers is None else args.workers
        cluster = RayClusterSettings(worker_replicas=workers, min_workers=workers, max_workers=args.max_workers)
        objects = render_rayjob(spec, image=image, namespace=args.namespace, cluster=cluster)
    else:
        objects = render_run(
            spec,
            image=image,
            namespace=args.namespace,
            ray_address=args.ray_address,
            ray_token_secret=args.ray_token_secret,
        )
    if args.json:  # a v1 List stays usable with `kubectl apply -f -`
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}, indent=1))
    else:
        print(to_yaml(objects), end="")
    return ExitCode.OK


# --- parser -----------------------------------------------------------------------------------


def _lines(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of lines (0 or more), got {value!r}")
    return n


def _run_id(value: str) -> str:
    from pgx_core import clock  # noqa: PLC0415

    if not clock.is_run_id(value):
        raise argparse.ArgumentTypeError(f"expected a run id such as 20261126T101500Z-3f9c2a7e, got {value!r}")
    return value


SPEC_HELP = "the run spec (YAML, kind PipelineRun)"
CORE_COMMANDS = (
    "validate", "plan", "run", "status", "rollback", "backup", "plugins", "init", "demo", "render", "controller",
    "runs", "report",
)  # fmt: skip


def _global_flags(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--json", action="store_true", default=default, help="print one JSON document instead of human output"
    )
    parser.add_argument(
        "--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=default,
        help="least severe log lines written to standard error (default: INFO)",
    )  # fmt: skip


def build_parser(plugins: Plugins | None = None) -> argparse.ArgumentParser:
    """The command line: the core's commands and those the enabled plugins add."""
    from pgx_core.pluginmanager import make_plugin_manager  # noqa: PLC0415

    plugins = plugins or make_plugin_manager()
    # Global flags go before or after the command: the command's copy leaves the value alone
    # unless given there (argparse would otherwise reset what was given before the command).
    common = argparse.ArgumentParser(add_help=False)
    _global_flags(common, argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="pgx", description="Pipeline runtime for APCD claims data lakes.")
    _global_flags(p, None)
    p.set_defaults(json=False, log_level="INFO", plugins=plugins)
    p.add_argument("--version", action="version", version=f"pgx {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, fn: Handler, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_, parents=[common])
        sp.set_defaults(func=fn, command_parser=sp)
        return sp

    sp = add("validate", cmd_validate, "validate a run spec")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    sp.add_argument("--show", action="store_true", help="print the normalized spec")

    sp = add("plan", cmd_plan, "show which entities would run and which are skipped; writes nothing")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    sp.add_argument("--stage", action="append", metavar="NAME", help="plan only this stage (repeatable)")
    sp.add_argument("--limit", type=int, help="plan as a run with --limit N would")
    sp.add_argument("--no-resume", action="store_true", help="plan as a run with --no-resume would (all run)")

    sp = add("run", cmd_run, "run the stages of a spec (resume is the default)")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    sp.add_argument("--stage", action="append", metavar="NAME", help="run only this stage (repeatable)")
    sp.add_argument("--limit", type=int, help="process at most N entities per stage")
    sp.add_argument("--no-resume", action="store_true", help="redo every entity")
    sp.add_argument("--executor", choices=["local", "ray"], help="override executor.type")

    sp = add("status", cmd_status, "per stage: entities completed / failed / pending / locked")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)

    sp = add("rollback", cmd_rollback, "restore every object a run replaced, from its backups")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    sp.add_argument("--run-id", required=True, type=_run_id, help="the run to undo (its summaries name it)")

    sp = add("backup", cmd_backup, "copy every object under SRC_PREFIX to BACKUP_ROOT/backup_<stamp>/")
    sp.add_argument("src_prefix", help="the prefix to copy (s3://BUCKET/PREFIX/ or file:///PATH/)")
    sp.add_argument("backup_root", help="where backup_<stamp>/ is made")
    sp.add_argument("--endpoint-url", default=None, help="S3 endpoint (MinIO, moto; default: $AWS_ENDPOINT_URL)")
    sp.add_argument("--region", default=None, help="S3 region (default: $AWS_REGION, else us-east-1)")

    add("plugins", cmd_plugins, "installed plugins, versions and stage types")

    sp = add("render", cmd_render, "print the Kubernetes objects that run SPEC in a cluster")
    sp.add_argument("spec", metavar="SPEC", help=SPEC_HELP)
    sp.add_argument(
        "--target",
        choices=["job", "rayjob"],
        default="job",
        help="job: ConfigMap + Job (a local Ray in the pod, or the cluster at --ray-address); "
        "rayjob: ConfigMap + KubeRay RayJob (a Ray cluster made for the run)",
    )
    sp.add_argument(
        "--ray-address",
        metavar="URL",
        help="job: join this Ray cluster, e.g. ray://pgx-raycluster-head-svc:10001 (set as RAY_ADDRESS)",
    )
    sp.add_argument(
        "--ray-token-secret",
        metavar="SECRET",
        help="job: the Secret holding that cluster's token (key auth_token), for a cluster with token auth",
    )
    sp.add_argument("--image", help="container image (default: pgx:<version>)")
    sp.add_argument("--namespace", help="namespace of the objects (default: the spec's, else none)")
    sp.add_argument(
        "--workers", type=int, metavar="N", help="rayjob: Ray worker pods the cluster starts with (default: 2)"
    )
    sp.add_argument(
        "--max-workers",
        type=int,
        metavar="M",
        help="rayjob: let KubeRay's autoscaler grow the workers up to M while tasks wait (default: --workers)",
    )

    sp = add("controller", cmd_controller, "reconcile PipelineRun resources into ConfigMaps + Jobs (in a cluster)")
    sp.add_argument("--namespace", help="namespace to watch (default: the pod's own)")
    sp.add_argument("--image", help="image of the Jobs it creates (default: $PGX_IMAGE, else pgx:<version>)")
    sp.add_argument(
        "--metrics-port", type=int, default=8080, metavar="PORT",
        help="port of /metrics, /healthz and /readyz (0: none)",
    )  # fmt: skip

    sp = add("runs", cmd_runs, "PipelineRuns and their status, for people who do not live in kubectl")
    actions = sp.add_subparsers(dest="action", metavar="ACTION", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--namespace", help="namespace of the runs (default: the kubeconfig context's, else default)")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        ap = actions.add_parser(name, help=help_, description=help_, parents=[common, where])
        ap.set_defaults(command_parser=ap)
        return ap

    action("list", "one row per PipelineRun: phase, stage, progress, entities, age")
    ap = action("get", "a PipelineRun's status in words: phase, conditions, summaries, the next command")
    ap.add_argument("name", metavar="NAME", help="the PipelineRun")
    ap = action("logs", "the log of the pgx container of a PipelineRun's current Job (its newest pod)")
    ap.add_argument("name", metavar="NAME", help="the PipelineRun")
    ap.add_argument("-f", "--follow", action="store_true", help="go on printing the log until the container ends")
    ap.add_argument("--tail", type=_lines, metavar="N", help="only the last N lines (default: all)")

    sp = add("report", cmd_report, "HTML report of a run, built from its summaries only")
    sp.add_argument("target", metavar="RUN_ID_OR_SPEC", help="a run id, or a spec (its latest run)")
    sp.add_argument("--lake", help="lake URI for a bare run id (default: PGX_LAKE)")
    sp.add_argument("--out", metavar="DIR", help="output directory (default ./pgx-report-<run_id>)")

    if plugins.makes_projects:
        sp = add("init", cmd_init, "a ready project: run spec, raw folders, example maps, README")
        sp.add_argument("dir", metavar="DIR", help="the project folder (made if missing; must hold no pgx.yaml)")
        sp.add_argument(
            "--sample-rows", type=int, default=0, metavar="N",
            help="also write N rows of synthetic extracts into the raw folders, for a first run (default: none)",
        )  # fmt: skip

        sp = add("demo", cmd_demo, "sample data into a local lake and the whole pipeline on it")
        sp.add_argument("--dir", default="./pgx-demo", help="the demo's project folder (reused by a rerun)")
        sp.add_argument(
            "--rows", type=int, default=100_000, help="synthetic rows (default 100000: a couple of minutes)"
        )
        sp.add_argument("--executor", choices=["local", "ray"], default=None, help="override executor.type (ray)")

    for command in plugins.commands(CORE_COMMANDS):
        sp = add(command.name, cmd_shortcut if command.shortcut else _plugin_command, command.help)
        command.configure(sp)
        sp.set_defaults(command_def=command)
    return p


class _PipeSafeStdout:
    """Standard output that ends quietly when the reader goes away (``pgx plan … | head``).

    The command still runs to the end and returns its own exit code; what it would have printed
    after the pipe closed is dropped instead of ending in a BrokenPipeError traceback.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.closed_by_reader = False

    def write(self, text: str) -> int:
        if not self.closed_by_reader:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self.closed_by_reader:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        self.closed_by_reader = True
        # What is still buffered goes nowhere, so the interpreter's last flush is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _PipeSafeStdout(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stdout = stdout


def _main(argv: Sequence[str] | None) -> int:
    try:
        parser = build_parser()
    except PgxError as exc:  # a plugin that breaks the command line for every command
        print(f"pgx: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    if argv is None:  # completing a shell's command line (`eval "$(register-python-argcomplete pgx)"`)
        import argcomplete  # noqa: PLC0415

        argcomplete.autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; pgx's usage code is 64
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        return ExitCode.USAGE if code == 2 else code
    args.ui = make_ui(args.json)
    log.setup(args.log_level, args.ui.log_handler())
    try:
        try:
            code = int(args.func(args))
        except OSError as exc:  # pyarrow's S3 filesystem reports every S3 failure as an OSError
            from pgx_core.lake.storage import arrow_error  # noqa: PLC0415

            raise (arrow_error(exc) or exc) from exc
    except PgxError as exc:
        if args.json:
            doc: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc), "exit_code": int(exc.exit_code)}
            if isinstance(exc, SpecError):
                doc["problems"] = [{"path": p.path, "message": p.message} for p in exc.problems]
            print(json.dumps(doc, indent=1))
        else:
            if isinstance(exc, ArgumentError):  # as argparse does for a flag it cannot parse
                print(args.command_parser.format_usage(), end="", file=sys.stderr)
            print(f"pgx: {exc}", file=sys.stderr)
        code = int(exc.exit_code)
    except KeyboardInterrupt:
        code = int(ExitCode.TRANSIENT)
    except Exception as exc:
        log.get_logger("cli").error(
            "internal error",
            extra={"event": "internal_error", "error_type": type(exc).__name__, "frames": log.safe_traceback(exc)},
        )
        print(f"pgx: internal error: {type(exc).__name__}: {scrub(str(exc))}", file=sys.stderr)
        code = int(ExitCode.INTERNAL)
    return code


def _entry() -> None:  # pragma: no cover
    sys.exit(main())


__all__ = ["UsageError", "build_parser", "main"]
