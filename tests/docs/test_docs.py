"""The docs cannot drift from the code: every check here reads a doc and the thing it describes."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from pgx_core import hookspecs
from pgx_core.cli import build_parser, docgen
from pgx_core.exitcodes import ExitCode
from pgx_core.spec.runspec import PipelineRun
from tests.conftest import REPO, line_count_project, pgx

DOCS = REPO / "docs"
EXAMPLE = REPO / "examples" / "pgx-example-linecount"
# Commands the docs describe that the CLI owner wires separately; drop one once `pgx --help` has it.
PENDING_COMMANDS: set[str] = set()


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def section(text: str, heading: str) -> str:
    """The body of the section under ``heading`` (up to the next heading of the same or a higher level)."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n") + len(heading) + 1
    nxt = re.compile(rf"^#{{1,{len(level)}}} ", re.M).search(text, start)
    return text[start : nxt.start() if nxt else len(text)]


def table_keys(text: str) -> list[str]:
    """First-column keys (``| `key` |``) of the Markdown tables in ``text``."""
    return re.findall(r"^\| `([^`]+)` \|", text, re.M)


# --- runspec.md -----------------------------------------------------------------------------------


def model_paths(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key of ``model`` by alias, nested models included (``spec.stages[].use``).

    Written independently of pgx_core.cli.docgen on purpose: the generated tables are checked
    against this walk, not against themselves.
    """
    out = []
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        out.append(path)
        ann = info.annotation
        item = get_args(ann)[0] if get_origin(ann) is list and get_args(ann) else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += model_paths(ann, path + ".")
        elif isinstance(item, type) and issubclass(item, BaseModel):
            out += model_paths(item, path + "[].")
    return out


def test_runspec_generated_tables_are_current() -> None:
    text = read("runspec.md")
    assert docgen.render(text) == text, "docs/runspec.md is stale: run python -m pgx_core.cli.docgen --write"


def test_runspec_documents_every_key_of_the_document() -> None:
    documented = table_keys(section(read("runspec.md"), "## Document keys"))
    expected = model_paths(PipelineRun)
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented))


def test_runspec_documents_every_parameter_of_every_builtin_stage() -> None:
    text = section(read("runspec.md"), "## Stage parameters (`with:`)")
    stages = {cls.type_name: cls for cls in docgen.builtin_stages()}
    headings = re.findall(r"^### `([^`]+)`$", text, re.M)
    assert sorted(headings) == sorted(stages)
    for name, cls in stages.items():
        documented = table_keys(section(text, f"### `{name}`"))
        assert sorted(documented) == sorted(model_paths(cls.Params)), name
    # The built-in stages are the ones the pgx distribution itself registers.
    assert {"ingest", "impute", "clean-pharmacy", "clean-medical"} <= set(stages)


def test_docgen_meanings_are_all_in_use() -> None:
    """A hand-written meaning for a key that is gone, or that now has a description, is stale."""
    core = {p: i for p, i, _ in docgen.walk(PipelineRun)}
    for path in docgen.MEANINGS:
        assert path in core and not core[path].description, f"docgen.MEANINGS[{path!r}] is stale"
    params = {f"{cls.type_name}.{p}": i for cls in docgen.builtin_stages() for p, i, _ in docgen.walk(cls.Params)}
    for path in docgen.PARAM_MEANINGS:
        assert path in params and not params[path].description, f"docgen.PARAM_MEANINGS[{path!r}] is stale"


def test_docgen_fails_on_an_undocumented_key() -> None:
    class Extra(BaseModel):
        documented: int = 0
        undocumented_thing: str = ""

    with pytest.raises(docgen.DocGenError, match="undocumented_thing"):
        docgen.key_docs(Extra, {"documented": "yes"})


def test_docgen_check_mode_detects_drift(tmp_path: Path) -> None:
    stale = tmp_path / "runspec.md"
    stale.write_text(read("runspec.md").replace("| `spec.lake` |", "| `spec.lakes` |"), encoding="utf-8")
    assert docgen.main([str(stale)]) == 1
    assert docgen.main(["--write", str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == read("runspec.md")


# --- hooks.md -------------------------------------------------------------------------------------


def hooks() -> dict[str, Any]:
    return {
        name: fn
        for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, f"{hookspecs.PROJECT}_spec")
    }


def signature(name: str, fn: Any) -> str:
    """``def name(a: T, …) -> R`` with annotations as written (they are strings: future annotations)."""
    sig = inspect.signature(fn)

    def ann(a: Any) -> str:
        return a if isinstance(a, str) else inspect.formatannotation(a)

    params = ", ".join(f"{p.name}: {ann(p.annotation)}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {ann(sig.return_annotation)}"


def runs_in(doc: str) -> str:
    m = re.search(r"Runs in: (.+?)\.?$", doc, re.M)
    assert m, "every hookspec docstring says where it runs"
    return m.group(1).strip()


def test_hooks_doc_has_every_hook_with_its_exact_signature() -> None:
    text = read("hooks.md")
    specs = hooks()
    assert len(specs) >= 8
    reference = section(text, "## Reference")
    documented = re.findall(r"^### `(pgx_\w+)`$", reference, re.M)
    assert sorted(documented) == sorted(specs), "hooks.md must list exactly the hooks of hookspecs.py"
    for name, fn in specs.items():
        body = section(reference, f"### `{name}`")
        assert f"```python\n{signature(name, fn)}\n```" in body, name
        assert f"Runs in: {runs_in(inspect.getdoc(fn) or '')}." in body, name


# --- operations.md --------------------------------------------------------------------------------


def test_operations_doc_explains_every_exit_code() -> None:
    table = section(read("operations.md"), "## Exit codes")
    codes = [int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)]
    assert sorted(codes) == sorted(int(c) for c in ExitCode)
    for row in re.findall(r"^\| \d+ \|.*$", table, re.M):
        assert row.count("|") == 5 and row.rstrip("| ").split("|")[-1].strip(), row  # "what to do" is filled


def test_operations_doc_names_real_spec_keys_and_chart_values() -> None:
    text = read("operations.md")
    keys = set(model_paths(PipelineRun))
    for key in set(re.findall(r"`(spec\.[A-Za-z.]+)`", text)):
        assert key in keys, f"operations.md names {key}, which is not a run spec key"
    for key in set(re.findall(r"`executor\.([A-Za-z]+)`", text)):
        assert f"spec.executor.{key}" in keys, key
    values_file = REPO / "charts" / "pgx" / "values.yaml"
    if not values_file.exists():
        pytest.skip("the chart is not in this checkout")
    values = yaml.safe_load(values_file.read_text())
    named = set(re.findall(r"`values\.([A-Za-z.]+)`", text)) - {"yaml", "schema.json"} | set(
        re.findall(r"`((?:job|ray|cronJob|serviceAccount|image|tmp)\.[A-Za-z.]+)`", text)
    )
    assert "schedules" in named
    for dotted in named:
        node: Any = values
        for part in dotted.split("."):
            assert isinstance(node, dict) and part in node, f"operations.md names values {dotted}, not in values.yaml"
            node = node[part]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block (fences at the start of a line)."""
    blocks: list[tuple[str, str]] = []
    body: list[str] = []
    lang, inside = "", False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if inside:
                blocks.append((lang, "\n".join(body)))
            else:
                lang, body = line.lstrip()[3:].strip(), []
            inside = not inside
        elif inside:
            body.append(line)
    return blocks


def pgx_commands(text: str) -> set[str]:
    """Subcommands named as ``pgx CMD`` in inline code and in shell code blocks."""
    found = set(re.findall(r"`pgx ([a-z][a-z-]+)", text))
    for lang, body in code_blocks(text):
        if lang in {"", "bash", "sh", "console"}:
            found |= set(re.findall(r"(?:^\s*|[|&;(]\s*|\$ )pgx ([a-z][a-z-]+)\b", body, re.M))
    return found


def test_docs_name_only_real_commands_and_existing_files() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    commands = set(sub.choices)  # type: ignore[arg-type]
    pending = PENDING_COMMANDS - commands
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text(encoding="utf-8")
        for cmd in pgx_commands(text):
            assert cmd in commands | pending, f"{doc.name} names `pgx {cmd}`, not a pgx command"
        for target in re.findall(r"\]\((?!https?://|#)([^)#]+)", text):
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"


def test_kubernetes_doc_values_render_valid_objects() -> None:
    """Each chart values example of kubernetes.md installs: schema, templates, Kubernetes and KubeRay schemas."""
    pytest.importorskip("helm_python")
    from tests.chart.k8s import render_chart, validate_k8s, validate_kuberay

    examples = [body for _, body in code_blocks(read("kubernetes.md")) if body.startswith("# my-values.yaml")]
    assert len(examples) >= 2
    for body in examples:
        objects = render_chart(yaml.safe_load(body))
        assert objects
        for obj in objects:
            if obj["apiVersion"] == "ray.io/v1":
                validate_kuberay(obj)
            else:
                validate_k8s(obj)


# --- plugins.md -----------------------------------------------------------------------------------

_FILE_BLOCK = re.compile(r"^<!-- file: (\S+) -->\n```[a-z]*\n(.*?)^```$", re.M | re.S)


def doc_files() -> dict[str, str]:
    """``{relative path: content}`` of the code blocks marked ``<!-- file: PATH -->`` in plugins.md."""
    files: dict[str, str] = {}
    for path, body in _FILE_BLOCK.findall(read("plugins.md")):
        assert path not in files, f"plugins.md has two blocks for {path}"
        files[path] = body
    return files


def example_files() -> dict[str, str]:
    out = {"pyproject.toml": (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")}
    for p in sorted((EXAMPLE / "pgx_example_linecount").glob("*.py")):
        out[str(p.relative_to(EXAMPLE))] = p.read_text(encoding="utf-8")
    return out


def test_plugins_doc_is_the_example_plugin_verbatim() -> None:
    doc, example = doc_files(), example_files()
    for path, content in example.items():
        assert path in doc, f"plugins.md does not show {path} of the example plugin"
        assert doc[path] == content, f"plugins.md's {path} differs from examples/pgx-example-linecount/{path}"
    for path, content in doc.items():
        if (EXAMPLE / path).exists():
            assert content == (EXAMPLE / path).read_text(encoding="utf-8"), path
        else:
            assert path.startswith("tests/"), f"plugins.md shows {path}, which the example does not have"


def install_from_doc(src: Path, site: Path) -> None:
    """Install the plugin assembled from plugins.md into ``site``, as pip would lay it out.

    pip needs a build backend (setuptools with bdist_wheel) that an offline virtualenv may lack, so
    the installed layout is written directly from the doc's pyproject.toml: the packages it lists
    and a dist-info with its name, version and entry points. setuptools validates the pyproject.
    """
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "[tool.setuptools] support is beta" in older setuptools
        read_configuration(src / "pyproject.toml")  # raises on an invalid [project] table
    meta = tomllib.loads((src / "pyproject.toml").read_text(encoding="utf-8"))
    project = meta["project"]
    for package in meta["tool"]["setuptools"]["packages"]:
        shutil.copytree(src / package, site / package)
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    requires = "".join(f"Requires-Dist: {r}\n" for r in project.get("dependencies", []))
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n{requires}"
    )
    groups = project.get("entry-points", {})
    (info / "entry_points.txt").write_text(
        "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
    )


@pytest.mark.integration
def test_plugin_built_from_the_doc_runs_and_passes_its_tests(tmp_path: Path) -> None:
    src, site = tmp_path / "pgx-example-linecount", tmp_path / "site"
    for path, content in doc_files().items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(content, encoding="utf-8")
    install_from_doc(src, site)
    # The doc-built copy comes first on the path, ahead of any installed copy of the example.
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)}
    probe = (
        "import json, importlib.metadata as m, pgx_example_linecount as p;"
        "ep = next(e for e in m.entry_points(group='pgx.plugins') if e.name == 'linecount');"
        "print(json.dumps([p.__file__, ep.value, ep.dist.name]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**os.environ, **env}, capture_output=True, text=True, check=True
    )
    module_file, value, dist = json.loads(out.stdout)
    assert Path(module_file).is_relative_to(site) and value == "pgx_example_linecount.plugin"
    assert dist == "pgx-example-linecount"

    # Step 5 of the doc: `pgx plugins`, then `pgx run` on a spec using the stage.
    listed = json.loads(pgx("plugins", "--json", env=env, check=True).stdout)["plugins"]
    assert any(p["name"] == "linecount" and p["stages"] == ["line-count"] for p in listed)
    lake, spec = line_count_project(
        tmp_path, {"pharmacy/a.txt": b"h1|h2\nx|y\n"}, "{use: line-count, with: {chunkBytes: 1048576}}"
    )
    run_id = json.loads(pgx("run", str(spec), "--json", env=env, check=True).stdout)["run_id"]
    summary = json.loads((lake / "pgx_pipeline" / "line_count" / f"run_id={run_id}" / "summary.json").read_text())
    assert summary["totals"]["completed"] == 1 and summary["stats"] == {"lines": 2}

    # Step 6: the doc's tests pass against the doc's plugin (local and S3 lakes, and Ray).
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=src,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert tests.returncode == 0, tests.stdout[-3000:] + tests.stderr[-2000:]
    assert re.search(r"\b3 passed\b", tests.stdout), tests.stdout[-500:]
