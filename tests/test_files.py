"""lavit/files.py: the out-dir lock and JSON-lines files read back after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from lavit.files import JSONLError, OutDirLock, OutDirLockedError, read_jsonl


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    with OutDirLock(tmp_path, "first run"):
        with pytest.raises(OutDirLockedError, match=rf"{tmp_path} is in use by PID {os.getpid()} \(first run\)"):
            OutDirLock(tmp_path, "second run").acquire()
    with OutDirLock(tmp_path, "third run"):  # released on exit
        pass


def test_a_killed_holder_with_a_forked_child_frees_the_folder_at_once(tmp_path):
    """A DataLoader worker is a forked child: it must not keep its parent's lock alive."""
    code = f"""
import os, signal, time
from lavit.files import OutDirLock
OutDirLock({str(tmp_path)!r}, "holder").acquire()
if os.fork() == 0:
    time.sleep(60)  # an orphaned worker, still alive after its parent dies
    os._exit(0)
print("locked", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.2)
    with OutDirLock(tmp_path, "rerun"):  # the orphan still sleeps, and holds nothing
        pass


def test_read_jsonl_drops_a_torn_tail_and_refuses_a_broken_middle(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert path.read_text().endswith('"b"')  # read only
    assert read_jsonl(path, repair=True) == [{"a": 1}, {"a": 2}]
    assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(JSONLError, match=rf"{path}, line 2: not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "missing.jsonl") == []
