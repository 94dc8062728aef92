"""Unit tests of the capture layer: register decoding for x86_64 and aarch64, gdb/lldb
output parsing, strace trace parsing, tool running (timeouts kill the whole group),
and the shared hung-child evidence. Fast: no chromadb, no debugger."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from forksafety import capture, procinfo
from forksafety.cli import check_output_file
from forksafety.demo import VARIANTS, expected_demo_outcome
from forksafety.errors import PtraceError, UsageError
from forksafety.outcome import Outcome
from forksafety.watch import wait_until

REPO = Path(__file__).resolve().parent.parent

# Recorded on this machine (Debian 12 x86_64, gdb 13.1): `info registers` +
# `info registers orig_rax` of the demo child stuck in futex.
GDB_X86_64 = textwrap.dedent("""\
    rax            0xfffffffffffffe00  -512
    rbx            0x7f4251045660      139922803807840
    rcx            0x7f425111f829      139922804701225
    rdx            0x5a                90
    rsi            0x89                137
    rdi            0x55fe719430c0      94551315591360
    rbp            0x7ffefede5758      0x7ffefede5758
    rsp            0x7ffefede5728      0x7ffefede5728
    r8             0x0                 0
    r9             0xffffffff          4294967295
    r10            0x0                 0
    r11            0x246               582
    r12            0x5a                90
    rip            0x7f425111f829      0x7f425111f829 <syscall+25>
    eflags         0x246               [ PF ZF IF ]
    cs             0x33                51
    fs_base        0x7f4251841b80      139922812181376
    orig_rax       0xca                202
    """)

# Recorded on this machine (lldb 14.0.6): `register read` of the same kind of child.
LLDB_X86_64 = textwrap.dedent("""\
    General Purpose Registers:
           rax = 0xfffffffffffffe00
           rbx = 0x00007f8875645660  libc.so.6`__GI___errno_location at errno-loc.c:26:10
           rcx = 0x00007f887571f829  libc.so.6`syscall + 25
           rdx = 0x0000000000000081
           rdi = 0x000055cea4cba290
           rsi = 0x0000000000000089
           r10 = 0x0000000000000000
           rip = 0x00007f887571f829  libc.so.6`syscall + 25
        rflags = 0x0000000000000246
    """)

# aarch64 cannot run here: this is gdb's `info registers` format on aarch64 with the
# values the kernel ABI gives a thread stopped in glibc's syscall() wrapper doing
# futex(uaddr, FUTEX_WAIT_BITSET_PRIVATE, 124, NULL): x8 = 98 (__NR_futex,
# include/uapi/asm-generic/unistd.h), x0..x3 the arguments (arch/arm64/kernel/signal.c
# restores x0 = orig_x0 before the debugger sees the stop).
GDB_AARCH64 = textwrap.dedent("""\
    x0             0xaaaab5c3e2f0      187650170069744
    x1             0x89                137
    x2             0x7c                124
    x3             0x0                 0
    x4             0x0                 0
    x5             0xffffffff          4294967295
    x6             0x0                 0
    x7             0x0                 0
    x8             0x62                98
    x9             0x1                 1
    x29            0xffffe4a1c0b0      281474517025968
    x30            0xffff9a3b1c2c      281473270094892
    sp             0xffffe4a1c0b0      0xffffe4a1c0b0
    pc             0xffff9a4c7e88      0xffff9a4c7e88 <syscall+40>
    cpsr           0x60001000          [ EL=0 BTYPE=0 SSBS C Z ]
    fpsr           0x0                 [ ]
    """)

LLDB_AARCH64 = textwrap.dedent("""\
    General Purpose Registers:
            x0 = 0x0000aaaab5c3e2f0
            x1 = 0x0000000000000080
            x2 = 0x0000000000000002
            x3 = 0x0000ffffe4a1c100
            x8 = 0x0000000000000062
            pc = 0x0000ffff9a4c7e88  libc.so.6`syscall + 40
    """)

# Recorded: the demo child's last lines in `strace -f -tt` (pids 31857 child, 31729 parent).
STRACE = textwrap.dedent("""\
    # forksafety strace of the fork demo (inherited)
    31729 19:13:50.755000 clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|SIGCHLD) = 31857
    31857 19:13:50.758871 futex(0x7f3e2009c0e8, FUTEX_WAKE_PRIVATE, 1) = 0
    31857 19:13:50.760487 write(4, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8
    31729 19:13:50.760500 openat(AT_FDCWD, "/proc/31857/stat", O_RDONLY|O_CLOEXEC) = 7
    31857 19:13:50.760591 futex(0x55abb2816310, FUTEX_WAIT_BITSET_PRIVATE, 117, NULL, FUTEX_BITSET_MATCH_ANY <unfinished ...>
    31729 19:13:50.760700 read(7, "31857 (python) S 31729", 1024) = 22
    31729 19:13:50.779000 kill(31857, SIGKILL) = 0
    31857 19:13:50.779819 <... futex resumed>) = ?
    31857 19:13:50.783407 +++ killed by SIGKILL +++
    31729 19:13:50.783500 --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_KILLED, si_pid=31857} ---
    """)


# -- registers ---------------------------------------------------------------------------------


def test_gdb_x86_64_registers_decode_to_the_futex_wait():
    regs = capture.parse_registers(GDB_X86_64)
    assert regs["orig_rax"] == 202 and regs["rdi"] == 0x55FE719430C0 and regs["r10"] == 0
    dec = capture.decode_syscall_registers(regs, "x86_64")
    assert dec is not None
    assert (dec.call.nr, dec.call.name) == (202, "futex")
    f = dec.call.futex
    assert f["op_name"] == "FUTEX_WAIT_BITSET_PRIVATE" and f["private"]
    assert (f["uaddr"], f["val"], f["timeout"]) == (0x55FE719430C0, 90, 0)
    assert dec.call.wait == "untimed"
    assert dec.interrupted  # rax = -512 = -ERESTARTSYS
    assert dec.registers == {"nr": "orig_rax", "arg1": "rdi", "arg2": "rsi", "arg3": "rdx", "arg4": "r10",
                             "arg5": "r8", "arg6": "r9"}
    dec.value_now, dec.value_source = 90, "gdb x/wx"
    text = "\n".join(dec.lines())
    assert "syscall number 202 (orig_rax) = futex" in text
    assert "expected value   rdx = 90" in text and "address          rdi = 0x55fe719430c0" in text
    assert "value now        90 (gdb x/wx)  -> unchanged" in text and "NULL: waits forever" in text


def test_lldb_x86_64_registers_need_the_syscall_number_from_proc():
    regs = capture.parse_registers(LLDB_X86_64)
    assert "orig_rax" not in regs and regs["rsi"] == 0x89
    assert capture.decode_syscall_registers(regs, "x86_64") is None  # no number: not guessed from rax
    dec = capture.decode_syscall_registers(regs, "x86_64", nr=202)
    assert dec.call.futex["val"] == 0x81 and dec.call.futex["uaddr"] == 0x55CEA4CBA290
    assert dec.registers["nr"] == "/proc/<pid>/syscall"


def test_gdb_aarch64_registers_decode_with_x8_and_x0_to_x3():
    regs = capture.parse_registers(GDB_AARCH64)
    assert regs["x8"] == 98 and regs["pc"] == 0xFFFF9A4C7E88 and regs["cpsr"] == 0x60001000
    dec = capture.decode_syscall_registers(regs, "aarch64")
    assert (dec.call.nr, dec.call.name) == (98, "futex")
    f = dec.call.futex
    assert (f["op_name"], f["uaddr"], f["val"], f["timeout"]) == (
        "FUTEX_WAIT_BITSET_PRIVATE", 0xAAAAB5C3E2F0, 124, 0)
    assert not dec.interrupted  # aarch64: x0 already holds the first argument again
    assert "syscall number 98 (x8) = futex" in "\n".join(dec.lines())
    assert capture.decode_syscall_registers(regs, "arm64").call.name == "futex"  # macOS/Linux alias


def test_lldb_aarch64_registers_decode_a_timed_futex_wait():
    dec = capture.decode_syscall_registers(capture.parse_registers(LLDB_AARCH64), "aarch64")
    f = dec.call.futex
    assert f["op_name"] == "FUTEX_WAIT_PRIVATE" and f["timeout"] == 0xFFFFE4A1C100
    assert dec.call.wait == "timed"


def test_the_architectures_do_not_mix():
    # x86_64 registers read as aarch64 have no x0..x3; aarch64 read as x86_64 no rdi..r10.
    assert capture.decode_syscall_registers(capture.parse_registers(GDB_X86_64), "aarch64") is None
    assert capture.decode_syscall_registers(capture.parse_registers(GDB_AARCH64), "x86_64") is None
    assert capture.decode_syscall_registers(capture.parse_registers(GDB_X86_64), "riscv64") is None
    # syscall 98 is futex on aarch64 but not on x86_64 (where futex is 202).
    regs = capture.parse_registers(GDB_X86_64) | {"orig_rax": 98}
    assert capture.decode_syscall_registers(regs, "x86_64").call.name != "futex"


def test_memory_word_from_gdb_and_lldb():
    assert capture.parse_memory_word("0x55fe719430c0:\t0x0000005a\n") == (0x55FE719430C0, 90)
    assert capture.parse_memory_word("0x55a522b59ba0: 0x00000095\n") == (0x55A522B59BA0, 0x95)
    assert capture.parse_memory_word("0x4005d0 <counter>:\t0x00000003") == (0x4005D0, 3)
    assert capture.parse_memory_word("Cannot access memory at address 0x0") is None


# -- gdb / lldb command lines and output ----------------------------------------------------------


def test_gdb_commands_per_architecture(tmp_path):
    ext = tmp_path / "python3.11-gdb.py"
    x86 = capture.gdb_commands("x86_64", ext)
    arm = capture.gdb_commands("aarch64", None, ["info sharedlibrary"])
    assert "info registers orig_rax" in x86 and "x/wx $rdi" in x86 and f"source {ext}" in x86 and "py-bt" in x86
    assert "info registers orig_rax" not in arm and "x/wx $x0" in arm and "py-bt" not in arm
    assert "info sharedlibrary" in arm
    for args in (x86, arm):
        assert args[-1] == "detach" and "thread apply all bt" in args and "info threads" in args


def test_split_gdb_sections():
    out = ("[Thread debugging using libthread_db enabled]\n\n@@forksafety-section info threads\n"
           "* 1 Thread 0x7f (LWP 5) \"python\" syscall ()\n\n@@forksafety-section detach\n"
           "[Inferior 1 (process 5) detached]\n")
    sections = dict(capture.split_gdb_sections(out))
    assert list(sections) == ["attach", "info threads", "detach"]
    assert "LWP 5" in sections["info threads"] and "detached" in sections["detach"]


def test_lldb_commands_attach_and_catch():
    attach = capture.lldb_commands("x86_64")
    assert attach[-2:] == ["-o", "detach"] and "memory read --size 4 --format x --count 1 $rdi" in attach
    assert "-k" not in attach
    catch = capture.lldb_commands("aarch64", catch_release="dd if=/dev/zero of=/tmp/gate bs=1 count=1")
    assert catch[:4] == ["-o", "platform shell dd if=/dev/zero of=/tmp/gate bs=1 count=1", "-o", "process continue"]
    assert "-k" in catch and "kill" in catch and "detach" not in catch


def test_split_lldb_sections():
    out = "(lldb) process attach --pid 7\nProcess 7 stopped\n(lldb) bt all\n* thread #1\n  * frame #0: syscall\n"
    sections = dict(capture.split_lldb_sections(out))
    assert sections["bt all"].endswith("frame #0: syscall")


def test_ptrace_refusal_names_the_fix():
    gdb = ("Could not attach to process.  If your uid matches the uid of the target\nprocess, check the "
           "setting of /proc/sys/kernel/yama/ptrace_scope, or try\nagain as the root user.\n"
           "ptrace: Operation not permitted.\n")
    err = capture.ptrace_refusal(gdb, "gdb")
    assert isinstance(err, PtraceError) and err.exit_code == 2
    text = str(err)
    assert "\n" not in text and "root" in text and "ptrace_scope" in text and "SYS_PTRACE" in text
    assert capture.ptrace_refusal("error: attach failed: Operation not permitted\n", "lldb") is not None
    assert capture.ptrace_refusal("[Inferior 1 (process 5) detached]\n", "gdb") is None


def test_find_python_gdb_extension(tmp_path):
    exe = tmp_path / "python3.11"
    exe.write_text("")
    assert capture.find_python_gdb_extension(executable=str(exe)) is None
    (tmp_path / "python3.11-gdb.py").write_text("# libpython")
    assert capture.find_python_gdb_extension(executable=str(exe)) == tmp_path / "python3.11-gdb.py"


# -- strace ------------------------------------------------------------------------------------------


def test_find_unfinished_futex_in_a_recorded_trace():
    call = capture.find_unfinished_futex(STRACE, 31857)
    assert call is not None
    assert call.line.startswith("31857 19:13:50.760591 futex(0x55abb2816310, FUTEX_WAIT_BITSET_PRIVATE, 117, NULL")
    assert call.time == "19:13:50.760591" and call.line_number == 6
    assert call.ended == "killed by SIGKILL"
    assert any("write(4" in line for line in call.before)
    assert capture.find_unfinished_futex(STRACE, 31729) is None  # the parent has no futex call here


def test_a_futex_that_returned_is_not_reported():
    trace = ("10 10:00:00.000001 futex(0x1, FUTEX_WAIT_PRIVATE, 0, NULL <unfinished ...>\n"
             "11 10:00:00.000002 futex(0x1, FUTEX_WAKE_PRIVATE, 1) = 1\n"
             "10 10:00:00.000003 <... futex resumed>) = 0\n"
             "10 10:00:00.000004 exit_group(0) = ?\n")
    assert capture.find_unfinished_futex(trace, 10) is None
    cut = "10 10:00:00.000001 futex(0x1, FUTEX_WAIT_PRIVATE, 0, NULL) = ?\n10 10:00:00.1 +++ killed by SIGKILL +++\n"
    assert capture.find_unfinished_futex(cut, 10).ended == "killed by SIGKILL"


def test_strace_command():
    cmd = capture.strace_command(Path("/tmp/t.trace"), ["python", "x.py"])
    assert cmd == ["strace", "-f", "-tt", "-A", "-o", "/tmp/t.trace", "python", "x.py"]


# -- running tools -------------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_run_tool_timeout_kills_the_whole_group():
    seen = []
    out = capture.run_tool(["sh", "-c", "sleep 30 & echo started; sleep 30"], timeout=1.0, on_start=seen.append)
    assert out.returncode is None and "timed out after 1 s" in out.output and "started" in out.output
    assert seen == [out.pid]
    with pytest.raises(ProcessLookupError):
        os.killpg(out.pid, 0)  # the shell and its background sleep are gone


def test_run_tool_ends_with_the_tool_and_stops_what_it_left_in_its_group(tmp_path):
    """A tool that exits but leaves a background process in its group (gdb's ``shell CMD &``):
    run_tool returns the tool's own result as soon as it exits (not at the timeout, even when the
    leftover holds the output pipe open), and the leftover is stopped."""
    for keeps_pipe in (True, False):
        redirect = "" if keeps_pipe else " >/dev/null 2>&1"
        bg = tmp_path / f"bg-{keeps_pipe}.pid"
        t0 = time.monotonic()
        out = capture.run_tool(["sh", "-c", f"sleep 300{redirect} & echo $! > {bg}; echo finished"], timeout=20)
        assert time.monotonic() - t0 < 10, keeps_pipe
        assert out.returncode == 0 and "finished" in out.output and "timed out" not in out.output
        assert wait_until(lambda: _gone(int(bg.read_text())), 5), keeps_pipe
        with pytest.raises(ProcessLookupError):
            os.killpg(out.pid, 0)


def test_run_tool_stops_the_group_when_the_caller_is_interrupted():
    pids = []

    class Stop(BaseException):
        pass

    def started(pid):
        pids.append(pid)
        time.sleep(0.2)
        raise Stop  # as forksafety.cli.Interrupted would, from a signal handler

    with pytest.raises(Stop):
        capture.run_tool(["sh", "-c", "sleep 30 & sleep 30"], timeout=30, on_start=started)
    with pytest.raises(ProcessLookupError):
        os.killpg(pids[0], 0)


def test_run_tool_missing_tool():
    out = capture.run_tool(["/nonexistent/gdb", "-batch"])
    assert out.returncode is None and "not installed" in out.output and not out.ok()
    with pytest.raises(capture.ToolMissingError, match="apt-get install gdb"):
        capture.require_tool("/nonexistent/gdb", "gdb", "install it: apt-get install gdb")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def test_check_tool_runs_says_why_a_tool_cannot_run(tmp_path):
    (tmp_path / "text").write_text("not a program")
    with pytest.raises(capture.ToolMissingError, match=r"could not run gdb \(.*text\): Permission denied: fix it"):
        capture.check_tool_runs([str(tmp_path / "text"), "--version"], "gdb", "fix it")
    (tmp_path / "garbage").write_bytes(b"\x00\x01")
    (tmp_path / "garbage").chmod(0o755)
    with pytest.raises(capture.ToolMissingError, match="Exec format error"):
        capture.check_tool_runs([str(tmp_path / "garbage"), "--version"], "gdb", "fix it")
    failing = _script(tmp_path / "failing", "echo 'first line'; echo 'libfoo.so: cannot open' >&2; exit 3")
    with pytest.raises(capture.ToolMissingError, match="exited 3: libfoo.so: cannot open"):
        capture.check_tool_runs([str(failing)], "strace", "fix it")
    refused = _script(tmp_path / "refused", "echo 'strace: PTRACE_TRACEME: Operation not permitted' >&2; exit 1")
    with pytest.raises(PtraceError, match="ptrace is not permitted: strace says"):
        capture.check_tool_runs([str(refused)], "strace", "fix it")
    hanging = _script(tmp_path / "hanging", "sleep 30")
    started = time.monotonic()
    with pytest.raises(capture.ToolMissingError, match="did not finish within 0.5 s"):
        capture.check_tool_runs([str(hanging)], "gdb", "fix it", timeout=0.5)
    assert time.monotonic() - started < 10
    capture.check_tool_runs(["true"], "true", "fix it")  # a tool that works: no error


def test_a_debugger_that_cannot_start_is_an_error_not_an_empty_capture(tmp_path):
    (tmp_path / "gdb").write_text("not a program")
    (tmp_path / "lldb").write_text("not a program")
    with pytest.raises(capture.ToolMissingError, match="could not run gdb .*Permission denied"):
        capture.gdb_capture(os.getpid(), gdb=str(tmp_path / "gdb"), python_stack="pystack")
    with pytest.raises(capture.ToolMissingError, match="could not run lldb .*Permission denied"):
        capture.lldb_capture(os.getpid(), lldb=str(tmp_path / "lldb"), python_stack=False)


def test_a_debugger_without_a_backtrace_is_not_called_detached_cleanly(tmp_path):
    fake = _script(tmp_path / "gdb", "echo 'gdb: unrecognized option'; exit 1")
    child = _sleeping_child()
    try:
        cap = capture.gdb_capture(child.pid, gdb=str(fake), python_stack="py-bt", timeout=10)
    finally:
        child.kill()
        child.wait(5)
    assert cap.returncode == 1 and not cap.timed_out
    assert not any("detached cleanly" in line for line in cap.after)
    assert any("may never have attached" in line for line in cap.after)


def test_innermost_python_frame_per_source():
    cap = capture.DebuggerCapture("gdb", ["gdb"], 0, "", 1)
    cap.python_stack_source = "py-bt"
    cap.python_stack = textwrap.dedent("""\
        Traceback (most recent call first):
          File "/site-packages/chromadb/api/rust.py", line 541, in _upsert
            return self.bindings.upsert(
          File "/work/main/forksafety/demo.py", line 567, in _child_main
        """)
    assert capture.innermost_python_frame(cap) == "_upsert (/site-packages/chromadb/api/rust.py:541)"
    cap.python_stack_source, cap.python_stack = "pystack", textwrap.dedent("""\
        Traceback for thread 7 (python) [] (most recent call last):
            (Python) File "/work/main/forksafety/demo.py", line 567, in _child_main
            (Python) File "/site-packages/chromadb/api/rust.py", line 541, in _upsert
        """)
    assert capture.innermost_python_frame(cap) == "_upsert (/site-packages/chromadb/api/rust.py:541)"
    cap.python_stack_source, cap.python_stack = "py-spy", ("$ py-spy dump\nThread 7 (idle): \"MainThread\"\n"
                                                           "    _upsert (chromadb/api/rust.py:541)\n")
    assert capture.innermost_python_frame(cap) == "_upsert (chromadb/api/rust.py:541)"
    cap.python_stack_source = ""
    assert capture.innermost_python_frame(cap) is None


def test_stale_folders_are_removed_only_when_ours_and_their_pid_is_gone(tmp_path):
    from forksafety.cli_demo import remove_stale_strace_folders
    from forksafety.demo import remove_stale_demo_folders
    from tests.demo_helpers import dead_pid

    gone = dead_pid()
    stale = [tmp_path / f"demo-module-level-{gone}-zz9", tmp_path / f"demo-lazy-in-task-{gone}-q1w2e3r4",
             # names from before the one vocabulary (variants.ALIASES): killed runs left those too
             tmp_path / f"demo-inherited-{gone}-ab_12xyz", tmp_path / f"demo-same-dir-new-client-{gone}-q1w2e3r4"]
    kept = [tmp_path / f"demo-module-level-{os.getpid()}-ab12xyz",  # a run still going
            tmp_path / "demo-inherited-kept-ab12xyz",  # --keep-data
            tmp_path / "demo-inherited-o42l1rap",  # old naming: cannot tell, left alone
            tmp_path / f"demo-no-such-variant-{gone}-ab12xyz",  # not our pattern
            tmp_path / f"run-20260101-000000-{gone}-x",  # the Celery runner's (it sweeps its own)
            tmp_path / f"my-demo-inherited-{gone}-abc"]
    for folder in stale + kept:
        (folder / "store").mkdir(parents=True)
    (tmp_path / f"demo-inherited-{gone}-afile").write_text("a file, not a folder")
    assert sorted(remove_stale_demo_folders(tmp_path)) == sorted(stale)
    assert all(not f.exists() for f in stale) and all(f.is_dir() for f in kept)
    assert (tmp_path / f"demo-inherited-{gone}-afile").is_file()
    strace_tmp = [tmp_path / f"forksafety-strace-{gone}-abc", tmp_path / f"forksafety-strace-{os.getpid()}-abc",
                  tmp_path / "forksafety-strace-abcdefgh"]
    for folder in strace_tmp:
        folder.mkdir()
    assert remove_stale_strace_folders(tmp_path) == strace_tmp[:1]
    assert [f.exists() for f in strace_tmp] == [False, True, True]


def test_a_deadline_hang_after_a_short_timeout_says_so(capsys):
    from forksafety.cli_demo import print_record
    from forksafety.demo import DemoRecord

    rec = DemoRecord(variant="fixed", summary="", outcome=Outcome.HANG, expected=expected_demo_outcome("fixed"),
                     seconds=0.5, rule="deadline", timeout=0.5, child_pid=1)
    print_record(rec)
    out = capsys.readouterr().out
    assert "DID NOT MATCH" in out and "note: no hang rule fired" in out and "use --timeout 5 or more" in out
    rec.rule = "deadlock-proven"
    print_record(rec)
    assert "note:" not in capsys.readouterr().out


# -- hung-child evidence (shared by the Celery runner and the demo) -------------------------------------


def _sleeping_child():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])


def test_child_evidence_and_celery_capture_share_one_implementation(tmp_path):
    child = _sleeping_child()
    try:
        assert wait_until(lambda: procinfo.snapshot(child.pid).state == "S", 10)
        snap = procinfo.snapshot(child.pid)
        parent = ["python", "tokio-rt-worker", "tokio-rt-worker", "sqlx-sqlite-wor"]
        sections, ev = capture.child_evidence(child.pid, snap, parent, os.getpid(), stacks=False)
        assert ev["lost_threads"] == ["sqlx-sqlite-wor", "tokio-rt-worker", "tokio-rt-worker"]
        assert ev["child_threads"] == len(snap.threads) and ev["parent_threads"] == 4
        assert ev["summary"].startswith(f"{len(snap.threads)} thread(s) in the child vs 4 in the parent")
        _, exact = capture.child_evidence(child.pid, snap, parent, os.getpid(), stacks=False,
                                          lost=["tokio-rt-worker", "sqlx-sqlite-wor", "tokio-rt-worker"])
        assert exact["lost_threads"] == ["sqlx-sqlite-wor", "tokio-rt-worker", "tokio-rt-worker"]
        ev = capture.capture_celery_child(child.pid, os.getpid(), snap, "prefork", "module-level", tmp_path,
                                          full=False)
        assert set(ev) == {"lost_threads", "syscall", "top_python_frame", "log", "child_threads",
                           "worker_threads", "summary"}
        assert "in the worker" in ev["summary"]
        log = Path(ev["log"]).read_text()
        assert log.startswith("# forksafety celery pool child capture (prefork/module-level)\n# command: ")
        assert "== threads: worker main vs pool child ==" in log
    finally:
        child.kill()
        child.wait(5)


def test_after_detach_reports_an_untraced_process():
    child = _sleeping_child()
    try:
        assert wait_until(lambda: procinfo.snapshot(child.pid).state == "S", 10)
        detached, lines = capture.after_detach(child.pid)
        assert detached and "TracerPid 0" in lines[0]
    finally:
        child.kill()
        child.wait(5)
    assert capture.after_detach(child.pid)[0] is False


def test_top_python_frame_from_pystack():
    text = ('Traceback for thread 5 (python) [Has the GIL] (most recent call last):\n'
            '    (Python) File "/w/forksafety/demo.py", line 536, in _child_main\n'
            '        ids = store.add_documents(...)\n'
            '    (Python) File "/v/langchain_core/vectorstores/base.py", line 259, in add_documents\n'
            '    (C) File "???", line 0, in syscall (libc.so.6)\n')
    assert capture.top_python_frame_pystack(text) == "add_documents (/v/langchain_core/vectorstores/base.py:259)"


def test_count_names():
    assert capture.count_names(["tokio-rt-worker", "python", "tokio-rt-worker"]) == "python, tokio-rt-worker x2"
    assert capture.count_names([]) == "(none)"


# -- the demo's pure parts ---------------------------------------------------------------------------------


def test_every_variant_has_an_expectation_per_platform():
    for name, v in VARIANTS.items():
        assert set(v.expected) >= {"linux", "darwin"}, name
        assert v.measured, name
    assert expected_demo_outcome("module-level", "linux").outcome is Outcome.HANG
    assert str(expected_demo_outcome("inherited", "darwin")) == "CRASH SIGTRAP"
    assert expected_demo_outcome("fixed", "linux").outcome is Outcome.PASS
    with pytest.raises(UsageError, match="unknown variant"):
        expected_demo_outcome("nope")


def test_check_output_file(tmp_path):
    check_output_file(tmp_path / "new" / "out.json")  # a folder that can be made: fine
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match="not writable"):
        check_output_file(tmp_path / "file" / "out.json")
    with pytest.raises(UsageError, match="is a folder"):  # one validator for every CLI (was "is a directory" here)
        check_output_file(tmp_path)


def test_importing_the_package_starts_no_thread_and_no_chromadb():
    code = ("import os, sys\n"
            "import forksafety.demo, forksafety.capture, forksafety.cli_demo, forksafety.cli_attach\n"
            "print(len(os.listdir('/proc/self/task')), 'chromadb' in sys.modules, 'langchain_chroma' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "False", "False"]


def test_what_a_tool_started_is_swept_after_its_caller_was_killed(tmp_path):
    """A process a tool forked (gdb's `shell CMD &`) outlives a SIGKILLed caller: PR_SET_PDEATHSIG
    reaches the tool only. run_tool tags it with the caller's pid, and watch.sweep_orphans,
    which the demo and debugger scripts run first, stops it."""
    import psutil

    from forksafety.watch import OWNER_ENV, sweep_orphans, wait_until

    marker = f"forksafety-orphan-test-{os.getpid()}"
    code = ("import sys; from forksafety.capture import run_tool; "
            f"run_tool(['bash', '-c', '(exec -a {marker} sleep 60) & sleep 60'], timeout=120)")
    caller = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent)

    def orphan():
        for p in psutil.process_iter(["cmdline"]):
            if (p.info["cmdline"] or [""])[0] == marker:
                return p
        return None

    try:
        assert wait_until(lambda: orphan() is not None, 20), "the tool's child never started"
        caller.kill()
        caller.wait(timeout=10)
        left = orphan()
        assert wait_until(lambda: not psutil.pid_exists(caller.pid) or psutil.Process(caller.pid).status() == "zombie", 5)
        assert left is not None and left.environ().get(OWNER_ENV) == str(caller.pid)
        assert left.pid in sweep_orphans()
        assert wait_until(lambda: orphan() is None, 10)
    finally:
        caller.kill()
        caller.wait(timeout=10)
        sweep_orphans()
        left = orphan()
        if left is not None:
            left.kill()
