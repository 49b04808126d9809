"""graft._util.exit.leave: the `graft` command ends without the interpreter's teardown, but with
everything the teardown did that a user could see: non-daemon threads finish, atexit handlers
run, buffered output reaches a pipe, and the exit status is the command's."""

import subprocess
import sys

import pytest


def _python(code: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("status", [0, 2, None])
def test_leave_runs_threads_and_atexit_flushes_and_keeps_the_status(tmp_path, status):
    """As the interpreter's exit: a late thread finishes, an idle executor's worker is stopped (not
    waited on forever), atexit handlers run, buffered output is delivered, the status kept."""
    code = f"""
import atexit, threading, time, sys
from graft._util.exit import leave
atexit.register(lambda: open("atexit-ran", "w").write("yes"))
def late():
    time.sleep(0.3)
    open("thread-done", "w").write("yes")
threading.Thread(target=late).start()
from concurrent.futures import ThreadPoolExecutor
idle = ThreadPoolExecutor(1)  # never shut down: its worker waits for work until told to stop
idle.submit(lambda: None).result()
sys.stdout.write("x" * 200000)  # buffered: only a flush before the exit delivers it
leave({status})
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == (status or 0), proc.stderr
    assert len(proc.stdout) == 200000
    assert (tmp_path / "thread-done").read_text() == "yes" and (tmp_path / "atexit-ran").read_text() == "yes"


def test_the_graft_command_leaves_through_it(tmp_path):
    """`python -m graft` (and the console script, graft.cli:run): its status and its output as
    main() gives them, and an atexit handler registered during the command still runs."""
    code = """
import atexit, sys
import graft.cli
real = graft.cli.main
def main(argv=None):
    atexit.register(lambda: print("handler ran"))
    return real(argv)
graft.cli.main = main
sys.argv = ["graft", "augment", "list"]
graft.cli.run()
print("never here")
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "light" in proc.stdout and proc.stdout.rstrip().endswith("handler ran") and "never here" not in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "graft", "predict", str(tmp_path / "no-run"), "x.jpg"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("graft: error:") and len(bad.stderr.splitlines()) == 1
