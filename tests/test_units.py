"""Fast checks of the pure parts: settings, syscall decoding, hang rules, scenario selection."""

from __future__ import annotations

from pathlib import Path

import pytest

from forksafety import procinfo
from forksafety.errors import SettingsError, UsageError
from forksafety.harness import POOLS, VARIANTS, make_scenario, select_scenarios
from forksafety.outcome import Expected, Outcome, expected_outcome
from forksafety.settings import load_settings, redact_url
from forksafety.watch import RULE_PROVEN, RULE_STALLED, StallDetector

# Recorded from a hung pool child on x86_64 (see docs/LINUX_RESULTS.md).
X86_FUTEX = "202 0x555d9c740450 0x89 0x8c 0x0 0x0 0xffffffff 0x7ffdc4cc1e78 0x7ff410b1f829"


def test_settings_defaults_are_offline(tmp_path):
    s = load_settings(environ={}, env_file=tmp_path / "missing.env")
    assert s.provider == "fake" and s.api_key is None
    assert s.redis_url == "redis://localhost:6379/0"


def test_env_file_is_read_and_environment_wins(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("PROVIDER=openai\nAPI_KEY=sk-from-file\nCOLLECTION_NAME=from_file\n")
    s = load_settings(environ={"COLLECTION_NAME": "from_env"}, env_file=env_file)
    assert (s.provider, s.api_key, s.collection_name) == ("openai", "sk-from-file", "from_env")


@pytest.mark.parametrize("env, needle", [
    ({"PROVIDER": "cohere"}, "unknown PROVIDER 'cohere'"),
    ({"PROVIDER": "openai"}, "PROVIDER=openai needs an API key"),
    ({"PROVIDER": "google", "API_KEY": " "}, "PROVIDER=google needs an API key"),
    ({"FAKE_EMBEDDING_SIZE": "-3"}, "FAKE_EMBEDDING_SIZE must be a positive integer"),
])
def test_bad_settings_raise_one_line_with_fix(tmp_path, env, needle):
    with pytest.raises(SettingsError) as info:
        load_settings(environ=env, env_file=tmp_path / "none")
    text = str(info.value)
    assert needle in text and "\n" not in text and ("set " in text or "fix" in text)


def test_api_key_never_in_repr_or_redacted_view(tmp_path):
    s = load_settings(environ={"PROVIDER": "openai", "API_KEY": "sk-secret-123"}, env_file=tmp_path / "x")
    assert "sk-secret-123" not in repr(s)
    assert "sk-secret-123" not in str(s.redacted())
    assert redact_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"


def test_decode_x86_64_futex_wait_private_without_timeout():
    call = procinfo.decode_syscall(X86_FUTEX, machine="x86_64")
    assert call.name == "futex" and call.nr == 202
    assert call.futex["op_name"] == "FUTEX_WAIT_BITSET_PRIVATE" and call.futex["private"]
    assert call.futex["val"] == 0x8C and call.futex["timeout"] == 0
    assert call.wait == "untimed"


def test_decode_aarch64_uses_its_own_numbers():
    call = procinfo.decode_syscall("98 0xaaaab000 0x80 0x2 0x0 0x0 0x0 0xffff 0xffff", machine="aarch64")
    assert call.name == "futex" and call.futex["op_name"] == "FUTEX_WAIT_PRIVATE"
    # 202 is accept on aarch64, not futex.
    assert procinfo.decode_syscall(X86_FUTEX, machine="aarch64").name == "accept"


@pytest.mark.parametrize("raw, wait", [
    ("202 0x1 0x89 0x0 0x7ffd0000 0x0 0xffffffff 0x1 0x2", "timed"),    # futex with a timeout
    ("230 0x1 0x0 0x7ffd0000 0x0 0x0 0x0 0x1 0x2", "timed"),            # clock_nanosleep
    ("232 0x3 0x7ffd0000 0x10 0xffffffff 0x0 0x0 0x1 0x2", "untimed"),  # epoll_wait(-1)
    ("232 0x3 0x7ffd0000 0x10 0x3e8 0x0 0x0 0x1 0x2", "timed"),         # epoll_wait(1000 ms)
    ("running", "none"),
])
def test_wait_kinds(raw, wait):
    assert procinfo.decode_syscall(raw, machine="x86_64").wait == wait


def _snap(threads: list[tuple[str, str]], cpu: float = 0.0) -> procinfo.ProcSnapshot:
    infos = [procinfo.ThreadInfo(tid=100 + i, name=name, state="S", syscall=procinfo.decode_syscall(raw, "x86_64"))
             for i, (name, raw) in enumerate(threads)]
    return procinfo.ProcSnapshot(pid=100, name="python", status="sleeping", state="S", wchan="futex_do_wait",
                                 cpu_seconds=cpu, threads=infos, syscall=infos[0].syscall)


def test_single_thread_untimed_private_futex_is_a_proven_deadlock():
    verdict = StallDetector(stall=2).feed(_snap([("python", X86_FUTEX)]), now=0.0)
    assert verdict is not None and verdict.rule == RULE_PROVEN


def test_timed_or_shared_futex_is_not_proof():
    shared = "202 0x1 0x9 0x8c 0x0 0x0 0xffffffff 0x1 0x2"  # no FUTEX_PRIVATE_FLAG
    timed = "202 0x1 0x89 0x8c 0x7ffd0000 0x0 0xffffffff 0x1 0x2"
    for raw in (shared, timed):
        assert StallDetector(stall=2).feed(_snap([("python", raw)]), now=0.0) is None


def test_stall_rule_needs_the_whole_window_without_cpu_progress():
    det = StallDetector(stall=2)
    two = [("python", X86_FUTEX), ("worker", X86_FUTEX)]
    assert det.feed(_snap(two, cpu=1.0), now=0.0) is None
    assert det.feed(_snap(two, cpu=1.0), now=1.0) is None
    assert det.feed(_snap(two, cpu=1.5), now=1.9) is None   # CPU moved: the window restarts
    assert det.feed(_snap(two, cpu=1.5), now=3.0) is None
    verdict = det.feed(_snap(two, cpu=1.5), now=4.0)
    assert verdict is not None and verdict.rule == RULE_STALLED


def test_a_sleeping_thread_prevents_stalled():
    det = StallDetector(stall=1)
    snap = _snap([("python", X86_FUTEX), ("helper", "230 0x1 0x0 0x7ffd0000 0x0 0x0 0x0 0x1 0x2")])
    assert all(det.feed(snap, now=t) is None for t in (0, 1, 2, 5, 10))


def test_lost_threads_is_a_multiset_difference():
    parent = ["python", "tokio-rt-worker", "tokio-rt-worker", "sqlx-sqlite-wor"]
    assert procinfo.lost_threads(parent, ["python"]) == ["sqlx-sqlite-wor", "tokio-rt-worker", "tokio-rt-worker"]


def test_all_selects_every_pool_then_every_prefork_variant():
    names = [(s.pool, s.variant) for s in select_scenarios(None, None, True)]
    assert names[: len(POOLS)] == [(p, "module-level") for p in POOLS]
    assert {v for p, v in names if p == "prefork"} == set(VARIANTS)
    assert len(names) == len(set(names))


def test_variants_apply_to_prefork_and_other_pools_keep_the_module_level_store():
    got = [(s.pool, s.variant) for s in select_scenarios(["threads", "prefork"], ["lazy"], False)]
    assert got == [("threads", "module-level"), ("prefork", "lazy")]
    got = [(s.pool, s.variant) for s in select_scenarios(None, ["spawn", "spawn"], False)]
    assert got == [("prefork", "spawn")]


def test_a_variant_on_a_non_forking_pool_is_refused_by_the_library():
    with pytest.raises(UsageError, match="prefork pool only"):
        make_scenario("threads", "lazy")


def test_expected_outcomes_per_platform():
    assert expected_outcome("prefork", platform="linux") == Expected(Outcome.HANG)
    assert expected_outcome("prefork", platform="darwin") == Expected(Outcome.CRASH, "SIGTRAP")
    assert expected_outcome("threads", platform="linux") == Expected(Outcome.PASS)
    assert not Expected(Outcome.CRASH, "SIGTRAP").matches(Outcome.CRASH, "SIGSEGV")


def test_billiard_private_start_method_function_still_exists():
    """forksafety.startmethod relies on billiard.context._force_start_method (private)."""
    from billiard import context

    assert callable(context._force_start_method)
    assert "forkserver" in context._concrete_contexts


def test_version_headers_name_the_pinned_libraries():
    from forksafety.versions import header_lines

    text = "\n".join(header_lines(["x"], "t"))
    for needle in ("# command: x", "# platform:", "# python:", "chromadb 1.5.9", "celery 5.7.0", "# time:"):
        assert needle in text


def test_repo_layout_keeps_the_lock_free_of_hosts():
    repo = Path(__file__).resolve().parent.parent
    lock = (repo / "requirements.lock").read_text()
    assert "http://" not in lock and "https://" not in lock and "--index-url" not in lock
    assert "chromadb==1.5.9" in lock and "--hash=sha256:" in lock


@pytest.mark.parametrize("url, hidden", [
    ("redis://:hunter2@h:6379/0", "hunter2"),
    ("redis://user:hunter2@h/0", "hunter2"),
    ("redis://h:6379/0?password=hunter2&db=1", "hunter2"),
])
def test_every_kind_of_url_password_is_redacted(url, hidden):
    assert hidden not in redact_url(url) and "***" in redact_url(url)


def test_urls_without_password_are_unchanged():
    for url in ("redis://localhost:6379/0", "filesystem://", "file:///tmp/x"):
        assert redact_url(url) == url


def test_env_file_that_is_not_utf8_is_a_settings_error(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"\xff\xfe\x00PROVIDER=fake\n")
    with pytest.raises(SettingsError, match="cannot read settings file .* save it as UTF-8"):
        load_settings(environ={}, env_file=env_file)


@pytest.mark.parametrize("name", ["x", "ab", "-abc", "abc-", "a b c", "a" * 513])
def test_invalid_collection_names_are_rejected_before_any_worker(tmp_path, name):
    with pytest.raises(SettingsError, match="not a valid Chroma collection name"):
        load_settings(environ={"COLLECTION_NAME": name}, env_file=tmp_path / "none")


def test_stop_processes_reaps_children_that_were_zombies_already():
    """reap=True leaves no zombie child behind, also one that had exited before the call
    (it used to be dropped as 'gone' before any waitpid, and stayed a zombie)."""
    import os
    import time as _time

    import psutil as _psutil

    from forksafety.watch import stop_processes

    quick = os.posix_spawn("/bin/true", ["true"], os.environ)
    slow = os.posix_spawn("/bin/sleep", ["sleep", "30"], os.environ)
    deadline = _time.monotonic() + 5
    while _psutil.Process(quick).status() != _psutil.STATUS_ZOMBIE and _time.monotonic() < deadline:
        _time.sleep(0.01)
    assert _psutil.Process(quick).status() == _psutil.STATUS_ZOMBIE
    assert stop_processes([_psutil.Process(quick), _psutil.Process(slow)], grace=1.0, reap=True) == []
    for pid in (quick, slow):
        assert not _psutil.pid_exists(pid) or _psutil.Process(pid).ppid() != os.getpid(), pid
