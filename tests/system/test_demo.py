"""The README's main command, ``python -m demo``, as a user runs it: a Temporal dev server,
the local SGP server (legacy store) and worker processes, all started and stopped by it.

The demo is asyncio-only (temporalio); these tests drive it as a subprocess, so they are
plain synchronous tests.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = pytest.mark.slow


def _row(output: str, label: str) -> str:
    match = re.search(rf"^\s+{re.escape(label)}\s+(.+)$", output, re.MULTILINE)
    assert match, output
    return match.group(1).strip()


def test_the_demo_completes_every_span_and_reopens_none() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "demo", "--runs", "8", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert _row(out, "spans") == "40"
    assert _row(out, "completed on the server") == "40"
    assert _row(out, 'stuck "Running"') == "0"
    assert _row(out, "reopened (in-progress after completed)") == "0"
    assert _row(out, "queue accounting balanced") == "yes"
    assert "Every span started was completed on the server" in out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_demo_stops_every_process_it_started(sig: signal.Signals) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "demo", "--runs", "2000", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A child of a non-interactive shell may inherit SIGINT ignored: restore Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        parent = psutil.Process(demo.pid)
        # The dev server, the SGP server and 4 workers, once all of them run.
        deadline = time.monotonic() + 60
        while len(parent.children()) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)
        children = parent.children(recursive=True)
        assert len(children) >= 6
        time.sleep(2)  # workflows are running
        demo.send_signal(sig)
        out, _ = demo.communicate(timeout=60)
        assert demo.returncode == 130, out
        assert "interrupted" in out
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
