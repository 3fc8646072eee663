"""A newcomer's first session, as a person at a terminal sees it: ``pgx init``, ``pgx run``, a rerun and
``pgx status``, each in a pseudo-terminal (so pgx draws its progress bars, spinner and panels), and
what they drew replayed on a terminal emulator (pyte) to read the screen as a person would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyte
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ray]

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
BAR = "━"  # rich's progress bar
LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR)\b")
COLUMNS, ROWS = 120, 40
STAGES = ("ingest-pharmacy", "ingest-medical", "impute", "clean-pharmacy", "clean-medical", "update-codes")


def on_terminal(*args: str, cwd: Path, timeout: float = 600) -> tuple[int, list[str], str]:
    """Run ``pgx ARGS`` with standard output and error on a pseudo-terminal of 120 x 40; returns
    the exit code, every line that was on the screen at the end or scrolled off it, and the
    raw text drawn (escape sequences removed: spinner frames and redraws included)."""
    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(COLUMNS), "LINES": str(ROWS)}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgx_core", *args], stdin=child, stdout=child, stderr=child, cwd=cwd, env=env
    )
    os.close(child)
    drawn = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        drawn += chunk
    os.close(main)
    code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    screen = pyte.HistoryScreen(COLUMNS, ROWS, history=10_000)
    screen.set_mode(pyte.modes.LNM)  # a pty turns "\n" into "\r\n"
    pyte.ByteStream(screen).feed(bytes(drawn))
    scrolled = ["".join(char.data for char in line.values()).rstrip() for line in screen.history.top]
    lines = [line.rstrip() for line in scrolled + list(screen.display)]
    return code, [line for line in lines if line], ANSI.sub("", drawn.decode("utf-8", errors="replace"))


def test_init_run_rerun_status(tmp_path: Path) -> None:
    code, lines, _ = on_terminal("init", "first", "--sample-rows", "2000", cwd=tmp_path)
    spec = Path("first/pgx.yaml")  # as the newcomer typed it
    assert code == 0, lines
    assert (tmp_path / spec).exists() and (tmp_path / "first" / "README.md").exists()
    assert lines[0].startswith("╭") and any(f"next: pgx run {spec}" in line for line in lines)

    code, lines, drawn = on_terminal("run", str(spec), cwd=tmp_path)
    assert code == 0, "\n".join(lines[-60:])
    for stage in STAGES:  # one bar per stage, left at its end: all entities done
        bar = next(line for line in lines if f" {stage} " in line and BAR in line)
        done, total = re.search(r"(\d+)/(\d+)", bar).groups()  # type: ignore[union-attr]
        assert done == total, bar
    assert "starting ray" in drawn  # the spinner while Ray starts (gone once it has)
    assert not any("starting ray" in line for line in lines)
    text = "\n".join(lines)
    assert "╭" in text and "finished: exit 0 (ok)" in text  # the closing panel
    assert "next: pgx report" in text and f"pgx status {spec}" in text
    # Log lines print above the bars, never into them; they are human lines, not JSON.
    assert not [line for line in lines if BAR in line and LEVEL.search(line)]
    assert any(LEVEL.search(line) for line in lines)
    assert not any(line.lstrip().startswith('{"ts"') for line in lines)

    code, lines, drawn = on_terminal("run", str(spec), cwd=tmp_path)
    assert code == 0, "\n".join(lines[-60:])
    assert "starting ray" not in drawn  # nothing to do: Ray is not started
    text = "\n".join(lines)
    assert "nothing to do" in text and f"next: pgx plan {spec}" in text

    code, lines, _ = on_terminal("status", str(spec), cwd=tmp_path)
    assert code == 0, lines
    for stage in STAGES:  # every stage, the two ingest stages apart
        row = next(line for line in lines if line.startswith(stage + " "))
        assert re.search(r"completed +[1-9]", row) and re.search(r"failed +0\b", row), row
