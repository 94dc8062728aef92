"""The runner matrix end to end (scripts/run_runners.py): every runner run for real, the
bug reproduced (or shown not to happen where the runner is safe by design), the fix
proven, evidence written for each HANG, and nothing left running afterwards.

One run of the whole matrix serves the per-runner tests (about 40 s on 2 cores);
the other tests run one or two scenarios each.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from forksafety.runners import CATALOG, RUNNERS
from forksafety.watch import OWNER_ENV, RUN_ID_ENV, process_gone
from tests.conftest import PYTHON, REPO, free_port, processes_with_env, run_cli

SCRIPT = REPO / "scripts" / "run_runners.py"
pytestmark = pytest.mark.e2e


def left_behind(runner_pid: int) -> list:
    """Processes the runner ``runner_pid`` started that still run (not zombies)."""
    return [p for p in processes_with_env(OWNER_ENV, str(runner_pid)) if not process_gone(p)]


def start_runner(args: list[str], log_dir: Path) -> subprocess.Popen:
    """The runner as a user starts it, its progress lines readable on stdout."""
    return subprocess.Popen([PYTHON, str(SCRIPT), *args, "--log-dir", str(log_dir)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_line(proc: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    """Read ``proc``'s stdout until a line holds ``needle`` (bounded: fails after ``timeout`` s)."""
    import selectors

    lines: list[str] = []
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if sel.select(timeout=0.2):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if needle in line:
                return lines
    pytest.fail(f"no line with {needle!r} within {timeout} s: {''.join(lines)[-2000:]}")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    """The whole matrix, run once: (record, stdout, runner pid)."""
    out = tmp_path_factory.mktemp("runners")
    record = out / "runners.json"
    proc = subprocess.Popen([PYTHON, str(SCRIPT), "--all", "--json", str(record), "--log-dir", str(out / "logs")],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-2000:]
    return json.loads(record.read_text()), stdout, proc.pid


@pytest.mark.parametrize("runner", RUNNERS)
def test_each_runner_bug_and_fix(matrix, runner):
    record, stdout, _pid = matrix
    rows = [r for r in record["results"] if r["runner"] == runner]
    assert {r["variant"] for r in rows} == {s.variant for s, _ in CATALOG if s.runner == runner}
    for row in rows:
        assert row["matched"], row
        if row["outcome"] == "HANG":
            # the bug: a proven deadlock in the worker, with the evidence file to show it
            assert row["rule"] == "deadlock-proven", row
            assert "futex" in row["detail"] and "lost in the fork" in row["detail"]
            evidence = Path(row["evidence"]["log"]).read_text()
            assert "== what this means ==" in evidence and "tokio-rt-worker" in evidence
            assert row["worker_pid"] and row["verdict_seconds"] is not None
        else:
            # the fix (or the runner's safe default): the documents were really added
            assert row["outcome"] == "PASS" and "added 2 documents" in row["detail"], row
    kinds = {r["kind"] for r in rows}
    assert kinds & {"fix", "default"}, "every runner has a fix or a safe default"
    assert "Runner matrix" in stdout


def test_matrix_outcomes_are_the_documented_ones(matrix):
    record, _stdout, _pid = matrix
    outcomes = {(r["runner"], r["variant"]): r["outcome"] for r in record["results"]}
    # the claims of the runners' own code and docs, as measured (docs/RUNNERS.md)
    assert outcomes[("gunicorn", "preload")] == "HANG" and outcomes[("gunicorn", "no-preload")] == "PASS"
    assert outcomes[("uwsgi", "default")] == "HANG" and outcomes[("uwsgi", "lazy-apps")] == "PASS"
    assert outcomes[("rq", "default")] == "PASS" and outcomes[("rq", "preload")] == "HANG"
    assert outcomes[("huey", "process")] == "HANG" and outcomes[("dramatiq", "default")] == "PASS"
    assert outcomes[("multiprocessing", "pool-fork")] == "HANG" and outcomes[("multiprocessing", "spawn")] == "PASS"
    fastapi = next(r for r in record["results"] if (r["runner"], r["variant"]) == ("fastapi", "prefork"))
    # what the report's user saw over HTTP: the status never reaches SUCCESS (it stops at STARTED:
    # task_track_started is on here), and the pool child is the stuck process
    assert fastapi["detail"].startswith("status ") and "STARTED" in fastapi["detail"]
    assert "SUCCESS" not in fastapi["detail"]
    fixed = next(r for r in record["results"] if (r["runner"], r["variant"]) == ("fastapi", "worker-process-init"))
    assert fixed["detail"].startswith("status ") and "SUCCESS; added 2 documents" in fixed["detail"]


def test_nothing_survives_the_matrix(matrix):
    _record, _stdout, pid = matrix
    assert left_behind(pid) == []


def test_a_mismatch_exits_1_and_stops_everything(tmp_path):
    # a fix given less time than it needs: the deadline decides, HANG is not the expected PASS
    proc = start_runner(["--runner", "huey", "--variant", "on-startup", "--timeout", "0.5"], tmp_path)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout + stderr
    assert "HANG (deadline)" in stdout and "0/1 matched" in stdout
    assert left_behind(proc.pid) == []


def test_ctrl_c_while_the_servers_start_stops_every_process(tmp_path):
    # the window is deterministic: with --preload the Gunicorn master opens the store (seconds)
    # before it listens; SIGINT as soon as it runs
    proc = start_runner(["--runner", "gunicorn", "--variant", "preload"], tmp_path)
    try:
        wait_for_line(proc, "gunicorn_preload", 60)
        deadline = time.monotonic() + 30
        while not left_behind(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert left_behind(proc.pid), "the gunicorn master runs"
        proc.send_signal(2)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and "interrupted by SIGINT" in err
    assert left_behind(proc.pid) == []


# SIGINT as Ctrl-C; SIGHUP as the terminal closing or the ssh session dropping (it ended the
# runner at once, leaving the stuck worker until a later run swept it)
@pytest.mark.parametrize("signum, name", [(2, "SIGINT"), (1, "SIGHUP")])
def test_ctrl_c_while_a_worker_hangs_stops_every_process(tmp_path, signum, name):
    proc = start_runner(["--runner", "gunicorn", "--variant", "preload", "--timeout", "60", "--stall", "30"],
                        tmp_path)
    try:
        # the request reached the worker, which is now stuck (the stall rule waits 30 s)
        wait_for_line(proc, "running in pid", 60)
        assert left_behind(proc.pid), "the gunicorn master and worker run"
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.count("\n") == 1 and f"interrupted by {name}" in err
    assert left_behind(proc.pid) == []


def test_a_killed_runner_is_cleaned_up_by_the_next_run(tmp_path):
    # RQ's work horse leaves the runner's process group (os.setpgrp) and is not the
    # runner's child, so SIGKILL on the runner can leave it behind, stuck
    proc = start_runner(["--runner", "rq", "--variant", "preload", "--timeout", "60", "--stall", "30"], tmp_path)
    try:
        wait_for_line(proc, "running in pid", 60)
        proc.kill()
        proc.communicate(timeout=10)
        time.sleep(0.5)  # PR_SET_PDEATHSIG stops the direct children meanwhile
        orphans = {p.pid for p in left_behind(proc.pid)}
        assert orphans, "the stuck work horse outlives the killed runner (this is what the next run must clean)"
        nxt = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--log-dir", str(tmp_path)],
                      script=SCRIPT, timeout=90)
        assert nxt.returncode == 0, nxt.stdout + nxt.stderr
        assert f"stopped {len(orphans)} process(es) left by a killed run" in nxt.stdout
        assert left_behind(proc.pid) == []
    finally:
        proc.kill()


def test_a_taken_port_is_one_line_exit_2(tmp_path):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = run_cli(["--runner", "gunicorn", "--port", str(port), "--log-dir", str(tmp_path)], script=SCRIPT,
                       timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and f"port {port} on 127.0.0.1 is already taken" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def test_a_missing_runner_program_is_one_line_exit_2(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    done = run_cli(["--runner", "uwsgi", "--bin-dir", str(empty), "--log-dir", str(tmp_path)], script=SCRIPT,
                   timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "runner program 'uwsgi' is not installed" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_are_one_line_exit_2():
    for args in (["--runner", "nope"], [], ["--runner", "rq", "--variant", "preload-nope"], ["--runner", "rq", "--port", "0"]):
        done = run_cli(args, script=SCRIPT, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_list_names_every_scenario():
    done = run_cli(["--list"], script=SCRIPT, timeout=60)
    assert done.returncode == 0
    for scenario, _ in CATALOG:
        assert scenario.variant in done.stdout


def test_a_temporary_folder_left_by_a_killed_run_is_removed_and_named(tmp_path):
    # a user reading "removed N temporary folder(s)" sees which ones went from the temporary folder
    from tests.demo_helpers import dead_pid

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    stale = tmp / f"forksafety-runners-{dead_pid()}-gunicorn_preload-x1"
    stale.mkdir()
    other = tmp / "forksafety-runners-notapid-x2"  # not our pattern: left alone
    other.mkdir()
    done = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--log-dir", str(tmp_path / "logs")],
                   env={"TMPDIR": str(tmp)}, script=SCRIPT, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"removed 1 temporary folder(s) left by killed runs: {stale}" in done.stdout
    assert not stale.exists() and other.is_dir()


def test_a_port_another_program_holds_is_never_taken_for_the_server(tmp_path):
    # --port was free when checked, then another program took it before Gunicorn bound it:
    # that program accepting connections must not pass for the server being ready (the request
    # would go to it and the deadline would call it a HANG, "matching" the bug variant)
    from forksafety.outcome import Outcome
    from forksafety.runners import RunOptions
    from forksafety.runners.model import ScenarioRun

    scenario, factory = next((s, f) for s, f in CATALOG if s.name == "gunicorn_preload")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        run = ScenarioRun(scenario, factory(), RunOptions(timeout=3, port=port, log_dir=tmp_path, capture=False))
        verdict = run.run()
    assert verdict.outcome is Outcome.ERROR, verdict.detail
    assert "gunicorn exited with code 1 before it was ready" in verdict.detail
    assert "Connection in use" in verdict.detail


def test_a_second_run_into_the_same_log_folder_is_one_line_exit_2(tmp_path):
    # both runs would write the same runner_<scenario>_<process>.log files: each would overwrite
    # the other's logs and could take the other's "ready" line for its own
    first = start_runner(["--runner", "multiprocessing", "--variant", "pool-fork", "--timeout", "60",
                          "--stall", "30"], tmp_path)
    try:
        wait_for_line(first, "running in pid", 60)
        second = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--log-dir", str(tmp_path)],
                         script=SCRIPT, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        assert second.stderr.count("\n") == 1 and f"(pid {first.pid}) is writing its logs to" in second.stderr
        assert "another --log-dir" in second.stderr and second.stdout == ""
        first.send_signal(2)
        _out, err = first.communicate(timeout=30)
    finally:
        first.kill()
    assert first.returncode == 130, err
    assert left_behind(first.pid) == []
    # the folder is free again once the first run ended
    again = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--log-dir", str(tmp_path)],
                    script=SCRIPT, timeout=90)
    assert again.returncode == 0, again.stdout + again.stderr


@pytest.mark.parametrize("args, said, fix", [
    # --fixed leaves the bug out: the variant is known, --fixed excluded it
    (["--runner", "gunicorn", "--fixed", "--variant", "preload"], "--variant preload is the bug variant of gunicorn",
     "drop --fixed to run it"),
    # a variant of another runner than the one chosen
    (["--runner", "gunicorn", "--variant", "lazy-apps"], "variant 'lazy-apps' is uwsgi's, not gunicorn's",
     "add --runner uwsgi"),
])
def test_a_variant_left_out_by_the_other_options_says_which_option(args, said, fix):
    done = run_cli(args, script=SCRIPT, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and said in done.stderr and fix in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("when, said", [
    # delay() waits for the broker: no answer within the client's 5 s
    ("before", ("POST /documents failed: ReadTimeout", "does not answer")),
    # the status endpoint's result backend read fails: HTTP 500
    ("after", ("GET /status/", "answered HTTP 500", "does not answer")),
])
def test_redis_gone_mid_run_names_the_http_error_and_the_servers_cause(tmp_path, when, said):
    # the run's Redis dies before the app sends the task (POST fails) or after (the status
    # endpoint fails): the verdict says which request failed and why (the app's log), not a
    # JSON decoding error of an error page
    from forksafety.outcome import Outcome

    def lose_redis(server, send, ctx):
        if when == "before":
            server.process.kill()
            server.process.wait(timeout=5)
        send(ctx)
        if when == "after":
            server.process.kill()

    verdict, options = run_with_redis_trouble("fastapi_worker-process-init", lose_redis, tmp_path, timeout=20)
    assert verdict.outcome is Outcome.ERROR, verdict.detail
    assert all(text in verdict.detail for text in said), verdict.detail
    assert "JSONDecodeError" not in verdict.detail
    assert [p for p in processes_with_env(RUN_ID_ENV, options.run_id) if not process_gone(p)] == []


def run_with_redis_trouble(name: str, trouble, tmp_path: Path, timeout: float):
    """Run scenario ``name`` on a private redis-server; ``trouble(server, send, ctx)`` replaces
    the driver's send (it calls ``send(ctx)`` and does something to the server around it).
    Returns (verdict, options). The server is stopped afterwards (resumed first if frozen)."""
    import signal as signals

    from forksafety.loopback import start_redis_server
    from forksafety.runners import RunOptions
    from forksafety.runners.model import ScenarioRun

    scenario, factory = next((s, f) for s, f in CATALOG if s.name == name)
    options = RunOptions(timeout=timeout, log_dir=tmp_path, capture=False)
    server = start_redis_server(options.run_id)
    driver = factory()
    send = driver.send
    driver.send = lambda ctx: trouble(server, send, ctx)
    try:
        return ScenarioRun(scenario, driver, options).run(server.url), options
    finally:
        if server.process.poll() is None:
            server.process.send_signal(signals.SIGCONT)
        server.stop()


@pytest.mark.parametrize("kind", ["fifo", "symlink"])
def test_json_onto_something_other_than_a_regular_file_is_one_line_exit_2(tmp_path, kind):
    # the record is written by rename: it would replace a device (as root: --json /dev/null
    # replaced the machine's /dev/null with a file), a FIFO, or the link instead of its target
    target = tmp_path / "record.json"
    if kind == "fifo":
        import os

        os.mkfifo(target)
        said = f"--json {target} is not a regular file"
    else:
        real = tmp_path / "real.json"
        real.write_text("{}")
        target.symlink_to(real)
        said = f"--json {target} is a symbolic link"
    done = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--json", str(target),
                    "--log-dir", str(tmp_path / "logs")], script=SCRIPT, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert done.stdout == ""
    assert (target.is_fifo() if kind == "fifo" else target.is_symlink())


def test_no_redis_server_is_one_line_exit_2_before_any_work(tmp_path):
    # RQ, Huey, Dramatiq and the FastAPI app need the private redis-server the run starts;
    # the runner programs themselves are found next to this Python, not on PATH
    done = run_cli(["--runner", "rq", "--variant", "default", "--log-dir", str(tmp_path)], script=SCRIPT,
                   env={"PATH": str(tmp_path / "nothing-here")}, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "redis-server is not installed" in done.stderr, done.stderr
    assert "--broker" not in done.stderr  # an option of the Celery runner, not of this one
    assert done.stdout == ""  # said before any work


def test_all_with_runner_is_one_line_exit_2():
    # --all ran every runner, the --runner NAME ignored
    done = run_cli(["--all", "--runner", "gunicorn"], script=SCRIPT, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    assert done.stderr.count("\n") == 1 and "--all and --runner" in done.stderr and done.stdout == ""


def test_list_shows_the_selection():
    done = run_cli(["--list", "--runner", "gunicorn", "--fixed"], script=SCRIPT, timeout=60)
    assert done.returncode == 0, done.stderr
    listed = [line.split()[:2] for line in done.stdout.splitlines()]
    assert listed == [["gunicorn", "no-preload"], ["gunicorn", "post-fork"]]
    bad = run_cli(["--list", "--runner", "gunicorn", "--variant", "lazy-apps"], script=SCRIPT, timeout=60)
    assert bad.returncode == 2 and "is uwsgi's, not gunicorn's" in bad.stderr


def test_port_for_runners_without_a_server_is_one_line_exit_2(tmp_path):
    # --port went unused (and a taken one was refused with "already taken") for runners that listen on nothing
    done = run_cli(["--runner", "rq", "--runner", "huey", "--port", str(free_port()), "--log-dir",
                    str(tmp_path)], script=SCRIPT, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    assert done.stderr.count("\n") == 1 and "--port is for the server runners" in done.stderr, done.stderr
    assert done.stdout == ""


def test_a_hang_before_the_work_reached_a_worker_is_not_the_bug_reproduced(tmp_path):
    # the broker stops answering (a frozen Redis): the producer blocks, no worker ever gets
    # the job, the deadline ends it; that HANG matched huey/process's expected HANG, exit 0
    import signal as signals

    from forksafety.outcome import Outcome

    def freeze_redis(server, send, ctx):
        server.process.send_signal(signals.SIGSTOP)
        send(ctx)

    verdict, _options = run_with_redis_trouble("huey_process", freeze_redis, tmp_path, timeout=3)
    assert verdict.outcome is Outcome.HANG and verdict.worker_pid is None, verdict
    assert "never reached a worker" in verdict.detail
    assert not verdict.matched and verdict.to_dict()["matched"] is False


def test_under_nohup_sighup_is_still_ignored(tmp_path):
    # both fastapi scenarios: several seconds of run after the first one starts
    proc = subprocess.Popen(["nohup", PYTHON, str(SCRIPT), "--runner", "fastapi", "--parallel", "1",
                             "--log-dir", str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_line(proc, "starting", 60)
        proc.send_signal(1)  # SIGHUP: nohup asked for it to be ignored
        time.sleep(1.0)
        assert proc.poll() is None, proc.communicate(timeout=10)
        proc.send_signal(2)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "interrupted by SIGINT" in err, err
    assert left_behind(proc.pid) == []


def test_the_same_port_again_right_after_a_run_is_not_taken(tmp_path):
    # a server that closed its connections leaves them in TIME_WAIT on its port for a minute;
    # the servers bind with SO_REUSEADDR, so the port is free for them, but the check said
    # "already taken" to a user re-running with the same --port
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: TIME_WAIT on 127.0.0.1:port
            client.recv(1)
    done = run_cli(["--runner", "gunicorn", "--variant", "no-preload", "--port", str(port), "--log-dir",
                    str(tmp_path)], script=SCRIPT, timeout=90)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "1/1 matched" in done.stdout


@pytest.mark.parametrize("env, said", [({"PROVIDER": "cohere"}, "unknown PROVIDER 'cohere'"),
                                       ({"COLLECTION_NAME": "x"}, "not a valid Chroma collection name")])
def test_bad_settings_are_one_line_exit_2_before_any_work(tmp_path, env, said):
    # every example loads the settings (.env, environment): each scenario was an ERROR whose
    # detail showed a line of the traceback ("raise SettingsError(")
    done = run_cli(["--runner", "multiprocessing", "--variant", "spawn", "--log-dir", str(tmp_path)], script=SCRIPT,
                   env=env, timeout=60)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr
    assert done.stderr.count("\n") == 1 and said in done.stderr, done.stderr
    assert done.stdout == ""
