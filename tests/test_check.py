"""``python -m forksafety check``: verdicts, names, probes, exit codes and bad input,
as a user sees them (the CLI runs in a subprocess, the target in a fresh interpreter)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from forksafety.check import ORIGINS_FILE, Safety, load_origins

REPO = Path(__file__).resolve().parent.parent


def forksafety(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``python -m forksafety ARGS`` as a user would, bounded."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "forksafety", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def tagged_processes(name: str, value: str) -> list[psutil.Process]:
    """Live processes (not us) whose environment has ``name=value``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and proc.environ().get(name) == value:
                found.append(proc)
        except (psutil.Error, OSError):
            pass
    return found


def write_module(folder: Path, name: str, source: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


# ------------------------------------------------------------------ the known-origins table
def test_every_origin_entry_has_a_source():
    data = json.loads(ORIGINS_FILE.read_text())
    entries = [e for key in ("threads", "libraries", "python_threads", "objects") for e in data[key]]
    entries += list(data["generic"].values())
    assert len(entries) >= 15
    for entry in entries:
        assert entry.get("source", "").strip(), entry
        assert entry["safety"] in ("unsafe", "risk", "handled")
        assert entry.get("fix", "").strip(), entry


def test_known_thread_names_and_libraries():
    origins = load_origins()
    assert "Tokio" in origins.for_thread_name("tokio-rt-worker").origin
    assert "Tokio" in origins.for_thread_name("tokio-runtime-w").origin
    assert "sqlx" in origins.for_thread_name("sqlx-sqlite-wor").origin
    assert "gRPC" in origins.for_thread_name("event_engine").origin
    assert origins.for_thread_name("my-own-thread") is None
    assert origins.for_library("libscipy_openblas64_-32a4b2a6.so").safety == "handled"
    assert origins.for_library("chromadb_rust_bindings.abi3.so").safety == "unsafe"
    assert origins.for_package("numpy").origin == "OpenBLAS thread pool"


def test_environment_switches_change_the_safety():
    origins = load_origins()
    grpc = origins.for_thread_name("event_engine")
    assert grpc.effective({})[0] == "unsafe"
    assert grpc.effective({"GRPC_ENABLE_FORK_SUPPORT": "0"})[0] == "unsafe"
    assert grpc.effective({"GRPC_ENABLE_FORK_SUPPORT": "1"})[0] == "risk"
    tokenizers = origins.for_library("tokenizers.abi3.so")
    assert tokenizers.effective({})[0] == "handled"
    assert tokenizers.effective({"TOKENIZERS_PARALLELISM": "true"})[0] == "unsafe"


def test_importing_the_package_starts_no_thread_and_opens_no_connection():
    code = textwrap.dedent("""
        import os
        import forksafety.check, forksafety.guard, forksafety.lab, forksafety.cases, forksafety.cli_check
        def target(fd):
            try:
                return os.readlink(f'/proc/self/fd/{fd}')
            except OSError:  # the fd listdir itself used
                return ''
        sockets = [fd for fd in os.listdir('/proc/self/fd') if target(fd).startswith('socket:')]
        print(len(os.listdir('/proc/self/task')), len(sockets))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]


def test_inspection_names_a_python_thread_and_where_it_started(tmp_path):
    script = write_module(tmp_path, "inspect_me", """
        import threading
        from forksafety import check
        check.start_tracking()
        stop = threading.Event()
        threading.Thread(target=stop.wait, name="fs-test-waiter", daemon=True).start()
        report = check.inspect_process()
        [mine] = [t for t in report.threads if t.python_name == "fs-test-waiter"]
        print(report.verdict.value, mine.safety, mine.runs, mine.started_at[-1])
        stop.set()
    """)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    verdict, safety, runs, where = done.stdout.split(maxsplit=3)
    assert (verdict, safety, runs) == ("UNSAFE", "unsafe", "threading.Event.wait")
    assert where.startswith("inspect_me.py:6")


# ------------------------------------------------------------------ verdicts
def test_plain_module_is_safe_and_exits_0():
    done = forksafety("check", "forksafety.cases.plain")
    assert done.returncode == 0, done.stderr
    assert "Verdict: SAFE" in done.stdout
    assert "Threads besides the one that would call fork() (OS view, /proc/<pid>/task): 0" in done.stdout


def test_file_target_with_a_thread_is_unsafe_and_names_it(tmp_path):
    write_module(tmp_path, "worker_tasks", """
        import threading
        _stop = threading.Event()
        poller = threading.Thread(target=_stop.wait, name="metrics-poller", daemon=True)
        poller.start()
    """)
    done = forksafety("check", str(tmp_path / "worker_tasks.py"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Verdict: UNSAFE" in done.stdout
    assert "'metrics-poller' (tid" in done.stdout and "runs threading.Event.wait" in done.stdout
    assert "started at worker_tasks.py:5 in <module>" in done.stdout
    assert "fix: create whatever starts it after the fork" in done.stdout


def test_open_sqlite_database_is_a_risk_with_its_source(tmp_path):
    done = forksafety("check", "forksafety.cases.sqlite_conn", env={"FORKSAFETY_CASE_DIR": str(tmp_path)})
    assert done.returncode == 1, done.stderr
    assert "Verdict: RISK" in done.stdout
    assert f"{tmp_path}/notes.sqlite3" in done.stdout
    assert "opened at forksafety/cases/sqlite_conn.py:16" in done.stdout
    assert "howtocorrupt.html section 2.6" in done.stdout


def test_json_record(tmp_path):
    out = tmp_path / "report.json"
    done = forksafety("check", "forksafety.cases.lock_thread", "--json", str(out))
    assert done.returncode == 1, done.stderr
    record = json.loads(out.read_text())
    assert record["verdict"] == "UNSAFE" and record["exit_code"] == 1 and record["status"] == "ok"
    [group] = record["report"]["thread_groups"]
    assert group["count"] == 1 and group["safety"] == "unsafe"
    assert record["import_seconds"] < 5


# ------------------------------------------------------------------ probes
def test_probe_ok_exits_0():
    done = forksafety("check", "forksafety.cases.plain", "--probe", "use")
    assert done.returncode == 0, done.stderr
    assert "Probe: use() in a forked child: PASS" in done.stdout


def test_probe_hang_is_proven_with_evidence(tmp_path):
    done = forksafety("check", "forksafety.cases.lock_thread", "--probe", "use", "--capture", "full",
                      "--log-dir", str(tmp_path))
    assert done.returncode == 1, done.stderr
    assert "Probe: use() in a forked child: HANG (deadlock-proven)" in done.stdout
    assert "FUTEX_WAIT" in done.stdout
    evidence = next(line.split("evidence: ", 1)[1] for line in done.stdout.splitlines() if "evidence: " in line)
    text = Path(evidence).read_text()
    assert text.startswith("# forksafety check --probe") and "py-spy" in text and "lost in the fork: python" in text
    # the header shows the user's command, not the internal runner's
    assert (f"# command: python -m forksafety check forksafety.cases.lock_thread --probe use --capture full "
            f"--log-dir {tmp_path}\n") in text
    assert "checkrun" not in text.splitlines()[1]


def test_probe_crash_names_the_signal(tmp_path):
    write_module(tmp_path, "crashy", """
        import os, signal
        def boom():
            os.kill(os.getpid(), signal.SIGSEGV)
    """)
    done = forksafety("check", "crashy", "--probe", "boom", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Verdict: SAFE" in done.stdout
    assert "in a forked child: CRASH SIGSEGV" in done.stdout


def test_probe_error_with_json_args(tmp_path):
    write_module(tmp_path, "picky", """
        def check_input(text, *, times=1):
            raise ValueError(f"bad {text} x{times}")
    """)
    done = forksafety("check", "picky", "--probe", "check_input", "--args", '["input"]', cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert 'Probe: check_input(["input"]) in a forked child: ERROR' in done.stdout
    assert "ValueError: bad input x1" in done.stdout
    done = forksafety("check", "picky", "--probe", "picky:check_input", "--args", '{"text": "kw", "times": 2}',
                      cwd=tmp_path)
    assert "ValueError: bad kw x2" in done.stdout


@pytest.mark.e2e
def test_celery_app_with_chroma_is_unsafe_and_its_task_hangs(tmp_path):
    done = forksafety("check", "-A", "celery_examples.tasks_pool_test", "--probe", "add_documents_task",
                      "--args", '[["a document"]]', "--capture", "light", "--log-dir", str(tmp_path),
                      env={"CHROMA_DIR": str(tmp_path / "chroma")})
    assert done.returncode == 1, done.stderr
    out = done.stdout
    assert out.startswith("forksafety check: Celery app celery_examples.tasks_pool_test")
    assert "Verdict: UNSAFE" in out
    assert "x tokio-rt-worker  UNSAFE  Tokio runtime worker" in out
    assert "x sqlx-sqlite-wor  UNSAFE" in out
    assert "first seen while running celery_examples/tasks_pool_test.py:" in out
    assert "OpenBLAS thread pool" in out  # named, and not counted against the verdict
    assert "For this Celery app, with the prefork pool, fix (one of):" in out
    assert "POOL_START_METHOD=spawn" in out and "worker_process_init" in out
    assert "in a forked child: HANG" in out and "tokio-rt-worker" in out.split("Probe:")[1]


# ------------------------------------------------------------------ bad input: exit 2, one line, no traceback of ours
@pytest.mark.parametrize("args, message", [
    (["check", "no_such_module_xyz"], "error: no module named 'no_such_module_xyz'"),
    (["check", "missing/tasks.py"], "error: file missing/tasks.py does not exist"),
    (["check", "not a module"], "is not a module name"),
    (["check"], "error: give exactly one target"),
    (["check", "pkg.tasks", "-A", "proj"], "error: give exactly one target"),
    (["check", "forksafety.cases.plain", "--probe", "use", "--args", "[1, 2"], "error: --args is not valid JSON"),
    (["check", "forksafety.cases.plain", "--probe", "use", "--args", '"text"'], "--args must be a JSON list or object"),
    (["check", "forksafety.cases.plain", "--args", "[]"], "--args needs --probe"),
    (["check", "forksafety.cases.plain", "--timeout", "0"], "must be a positive number of seconds"),
    (["check", "forksafety.cases.plain", "--probe", "nothing_here"], "--probe: 'nothing_here' is not defined"),
    (["check", "forksafety.cases.plain", "--probe", ":add"],
     "error: --probe ':add' is not a callable name: use NAME or a.b (in the target), or module:callable"),
    (["check", "forksafety.cases.plain", "--probe", "::"], "error: --probe '::' is not a callable name"),
    (["check", "forksafety.cases.plain", "--probe", ""], "error: --probe '' is not a callable name"),
    (["check", "forksafety.cases.plain", "--probe", "os..path:join"], "is not a callable name"),
    (["check", "forksafety/"], "error: forksafety/ is a folder, not a .py file"),
    (["check", "/dev/null"], "error: /dev/null is a character device, not a .py file"),
    (["check", "README.md/tasks.py"], "README.md is a file, not a folder"),
    (["check", "-A", "forksafety.cases.plain"], "no Celery app found"),
    ([], "choose a command"),
    (["inspekt", "123"], "error: unknown command 'inspekt': use one of check, lab, inspect"),
])
def test_bad_input_exits_2_with_one_line_and_no_traceback(args, message):
    done = forksafety(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# --json and --log-dir are checked before any work: the target (which leaves a file when it
# is imported) is never imported, and the error is one line, exit 2.
IMPORT_MARK_MODULE = """
    import os
    open(os.environ["FS_IMPORT_MARK"], "w").close()
    def use():
        return 1
"""


@pytest.mark.parametrize("extra, message", [
    (["--json", "{tmp}"], "error: --json {tmp} is a folder: pass a file path"),
    (["--json", "{tmp}/a_file/record.json"], "error: --json {tmp}/a_file/record.json: {tmp}/a_file is not a folder"),
    (["--json", "/proc/record.json"], "error: the folder of --json /proc is not writable"),
    (["--probe", "use", "--log-dir", "{tmp}/a_file"], "error: --log-dir {tmp}/a_file is a file, not a folder"),
    (["--probe", "use", "--log-dir", "{tmp}/a_file/dumps"], "error: --log-dir {tmp}/a_file/dumps: {tmp}/a_file is "
                                                            "not a folder"),
    (["--probe", "use", "--log-dir", "/proc/dumps"], "error: --log-dir /proc/dumps is not writable"),
])
def test_output_paths_are_checked_before_any_work(tmp_path, extra, message):
    write_module(tmp_path, "marks_import", IMPORT_MARK_MODULE)
    (tmp_path / "a_file").write_text("not a folder")
    mark = tmp_path / "imported"
    extra = [a.format(tmp=tmp_path) for a in extra]
    done = forksafety("check", "marks_import", *extra, cwd=tmp_path, env={"FS_IMPORT_MARK": str(mark)})
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("python -m forksafety check: " + message.format(tmp=tmp_path)), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert not mark.exists()  # nothing was run


def test_json_onto_an_existing_file_says_it_was_replaced(tmp_path):
    out = tmp_path / "report.json"
    done = forksafety("check", "forksafety.cases.plain", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout.rstrip().endswith(f"exit 0; record written to {out}")
    done = forksafety("check", "forksafety.cases.plain", "--json", str(out))
    assert done.stdout.rstrip().endswith(f"exit 0; record written to {out} (replaced the previous file)")
    assert json.loads(out.read_text())["verdict"] == "SAFE"


def test_probe_that_is_not_callable_says_what_it_is(tmp_path):
    write_module(tmp_path, "has_constant", "NOTCALL = 3\n")
    done = forksafety("check", "has_constant", "--probe", "NOTCALL", cwd=tmp_path)
    assert done.returncode == 2
    assert "error: --probe: 'NOTCALL' is not callable (it is an int)" in done.stderr


# ------------------------------------------------------------------ processes the target or probe leaves behind
def test_probe_whose_children_keep_running_ends_at_once_and_stops_them(tmp_path):
    write_module(tmp_path, "leaves_children", """
        import os, time
        def spawn():
            [os.fork() == 0 and time.sleep(3600) for _ in range(3)]
            return 1
    """)
    mark = uuid.uuid4().hex
    record = tmp_path / "record.json"
    started = time.monotonic()
    done = forksafety("check", "leaves_children", "--probe", "spawn", "--probe-timeout", "20", "--json", str(record),
                      cwd=tmp_path, env={"FS_TEST_MARK": mark})
    assert time.monotonic() - started < 15  # it waited ~90 s for end-of-file on the result pipe
    assert done.returncode == 0, done.stderr
    assert "Probe: spawn() in a forked child: PASS" in done.stdout and "returned 1" in done.stdout
    assert "note: the probe left 3 processes running" in done.stdout
    assert len(json.loads(record.read_text())["probe"]["leftovers"]) == 3
    assert tagged_processes("FS_TEST_MARK", mark) == []


def test_sigkill_of_check_leaves_no_process_of_the_target(tmp_path):
    write_module(tmp_path, "forks_at_import", """
        import os, time
        if os.fork() == 0:            # a child of the import, in the runner's process group
            if os.fork() == 0:        # and one that leaves it (a daemon's own session)
                os.setsid()
                time.sleep(3600)
                os._exit(0)
            time.sleep(3600)
            os._exit(0)
        time.sleep(60)                # the import is still running when check is killed
    """)
    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "FS_TEST_MARK": mark}
    proc = subprocess.Popen([sys.executable, "-m", "forksafety", "check", "forks_at_import", "--timeout", "90"],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tagged_processes("FS_TEST_MARK", mark)) < 5:
            time.sleep(0.1)  # CLI, runner, its watchdog, the import's child and grandchild
        assert len(tagged_processes("FS_TEST_MARK", mark)) == 5
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and tagged_processes("FS_TEST_MARK", mark):
            time.sleep(0.1)
        left = tagged_processes("FS_TEST_MARK", mark)
        assert left == [], [(p.pid, p.cmdline()) for p in left]
    finally:
        proc.kill()
        for p in tagged_processes("FS_TEST_MARK", mark):
            p.kill()


@pytest.mark.parametrize("source, message", [
    ("import ctypes\nctypes.string_at(0)\n", "error: importing 'dies_at_import' killed the process with SIGSEGV"),
    ("import os\nos._exit(0)\n", "error: importing 'dies_at_import' exited the process with code 0 (os._exit() "
                                 "at import?)"),
])
def test_import_that_ends_the_process_names_the_target_and_the_cause(tmp_path, source, message):
    write_module(tmp_path, "dies_at_import", source)
    done = forksafety("check", "dies_at_import", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines()[0] == f"python -m forksafety check: {message}"
    assert "without a result" not in done.stderr
    if "SIGSEGV" in message:  # the interpreter's last words point at the target's line
        assert 'dies_at_import.py", line 2 in <module>' in done.stderr and "checkrun.py" not in done.stderr


def test_target_that_stops_itself_is_reported_as_stopped(tmp_path):
    write_module(tmp_path, "stops_itself", """
        import os, signal
        def stop():
            os.kill(os.getpid(), signal.SIGSTOP)
        if os.environ.get("FS_STOP_AT_IMPORT"):
            stop()
    """)
    started = time.monotonic()
    done = forksafety("check", "stops_itself", "--timeout", "60", cwd=tmp_path, env={"FS_STOP_AT_IMPORT": "1"})
    assert time.monotonic() - started < 20  # not the 60 s import bound
    assert done.returncode == 2
    assert "error: importing 'stops_itself' stopped the process (state T" in done.stderr
    assert "stops_itself.py:6" in done.stderr  # where (py-spy, without suspending the stopped process)
    assert "Stack backtrace" not in done.stderr and "anyhow" not in done.stderr
    done = forksafety("check", "stops_itself", "--probe", "stop", "--probe-timeout", "2", "--capture", "full",
                      "--log-dir", str(tmp_path / "dumps"), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "in a forked child: HANG (deadline)" in done.stdout
    assert "the child is stopped (state T" in done.stdout
    [evidence] = (tmp_path / "dumps").iterdir()
    text = evidence.read_text()
    assert "The probe child is stopped (state T)" in text
    assert "Stack backtrace" not in text and "anyhow" not in text


def test_tool_failure_is_one_line():
    from forksafety.check import tool_failure_line

    spy = textwrap.dedent("""\
        Process 1: python x.py
        Python v3.11.7

        Error: Failed to get stack traces

        Caused by:
            0: Failed to suspend process
            1: unexpected waitpid result

        Stack backtrace:
           0: <E as anyhow::context::ext::StdError>::ext_context
           1: py_spy::main
    """)
    assert tool_failure_line(spy) == "Error: Failed to get stack traces (unexpected waitpid result)"


def test_import_error_shows_the_targets_own_error(tmp_path):
    write_module(tmp_path, "broken_tasks", """
        import json
        SETTINGS = json.loads("{}")
        RATE = 1 / len(SETTINGS)
    """)
    done = forksafety("check", "broken_tasks", cwd=tmp_path)
    assert done.returncode == 2
    first, *rest = done.stderr.splitlines()
    assert first == ("python -m forksafety check: error: importing 'broken_tasks' failed: "
                     "ZeroDivisionError: division by zero")
    assert "broken_tasks.py\", line 4, in <module>" in done.stderr
    assert "checkrun.py" not in done.stderr and "importlib" not in done.stderr


def test_missing_dependency_of_the_target_is_an_import_error(tmp_path):
    write_module(tmp_path, "needs_dep", "import no_such_dependency_abc\n")
    done = forksafety("check", str(tmp_path / "needs_dep.py"))
    assert done.returncode == 2
    assert "failed: ModuleNotFoundError: No module named 'no_such_dependency_abc'" in done.stderr


def test_import_that_hangs_is_reported_and_killed(tmp_path):
    write_module(tmp_path, "stuck_at_import", """
        import threading
        threading.Event().wait()  # never set: the import never finishes
    """)
    mark = uuid.uuid4().hex
    started = time.monotonic()
    done = forksafety("check", "stuck_at_import", "--timeout", "2", cwd=tmp_path, env={"FS_TEST_MARK": mark})
    assert time.monotonic() - started < 40
    assert done.returncode == 2
    assert "error: importing 'stuck_at_import' did not finish within 2 s" in done.stderr
    assert "stuck_at_import.py:3" in done.stderr  # where it hangs (py-spy)
    assert tagged_processes("FS_TEST_MARK", mark) == []


@pytest.mark.parametrize("case, env, expect", [
    ("grpc_channel", {"GRPC_ENABLE_FORK_SUPPORT": "0"}, "in a forked child: HANG (deadline)"),
    ("redis_client", {}, "in a forked child: PASS"),
])
def test_every_process_of_a_check_is_gone_afterwards(case, env, expect, tmp_path):
    mark = uuid.uuid4().hex
    done = forksafety("check", f"forksafety.cases.{case}", "--probe", "use", "--probe-timeout", "3",
                      "--capture", "none", env={"FS_TEST_MARK": mark, "FORKSAFETY_CASE_DIR": str(tmp_path), **env})
    assert expect in done.stdout, done.stderr
    assert tagged_processes("FS_TEST_MARK", mark) == []  # runner, its server (gRPC, redis) and probe child


def test_interrupt_exits_130_and_stops_everything():
    mark = uuid.uuid4().hex
    env = {**os.environ, "PYTHONPATH": str(REPO), "FS_TEST_MARK": mark, "GRPC_ENABLE_FORK_SUPPORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "forksafety", "check", "forksafety.cases.grpc_channel",
                             "--probe", "use", "--probe-timeout", "60"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(tagged_processes("FS_TEST_MARK", mark)) < 4:
            time.sleep(0.1)  # CLI, runner, gRPC server, probe child
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted by SIGINT" in err and "Traceback" not in err
    assert tagged_processes("FS_TEST_MARK", mark) == []


def test_safety_enum_values():
    assert [s.value for s in Safety] == ["SAFE", "RISK", "UNSAFE"]
