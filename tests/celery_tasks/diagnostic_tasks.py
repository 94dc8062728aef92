"""Test tasks: a pool child that dies by a signal, tasks that are slow but healthy,
and a task that truly deadlocks with more than one thread in the child.

No ChromaDB here: these exercise the runner's classification on real workers.
"""

import os
import resource
import signal
import threading
import time

from forksafety.app import make_app

app = make_app("diagnostic_tasks")


@app.task(name="tests.celery_tasks.diagnostic_tasks.kill_own_child")
def kill_own_child(signal_name: str) -> None:
    """Kill the process running this task with ``signal_name`` (e.g. SIGTRAP, SIGSEGV).
    Core dumps are disabled first so the test leaves no core file behind."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), getattr(signal, signal_name))
    time.sleep(5)  # not reached: the default action of these signals terminates the process


@app.task(name="tests.celery_tasks.diagnostic_tasks.sleep_then_return")
def sleep_then_return(seconds: float) -> str:
    """Slow but healthy: sleeps (clock_nanosleep, a timed wait), then returns."""
    time.sleep(seconds)
    return "slept"


@app.task(name="tests.celery_tasks.diagnostic_tasks.compute_then_return")
def compute_then_return(seconds: float) -> int:
    """Slow but healthy: burns CPU for ``seconds``, then returns."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@app.task(name="tests.celery_tasks.diagnostic_tasks.event_wait_then_return")
def event_wait_then_return(seconds: float) -> str:
    """Slow but healthy: waits on a threading.Event with a timeout (a timed futex wait)."""
    threading.Event().wait(timeout=seconds)
    return "waited"


@app.task(name="tests.celery_tasks.diagnostic_tasks.helper_thread_sets_event")
def helper_thread_sets_event(seconds: float) -> str:
    """Slow but healthy with two threads: the task waits *without* timeout on an
    Event that a helper thread sets after sleeping ``seconds``."""
    done = threading.Event()

    def helper() -> None:
        time.sleep(seconds)
        done.set()

    threading.Thread(target=helper, name="helper").start()
    done.wait()
    return "helper finished"


@app.task(name="tests.celery_tasks.diagnostic_tasks.two_thread_deadlock")
def two_thread_deadlock() -> None:
    """A real deadlock with two threads: each holds one lock and waits, without
    timeout, for the other's (lock-order inversion). Nothing can ever end it."""
    a, b = threading.Lock(), threading.Lock()
    both_hold = threading.Barrier(2)

    def other() -> None:
        with b:
            both_hold.wait()
            with a:
                pass

    thread = threading.Thread(target=other, name="lock-b-holder")
    thread.start()
    with a:
        both_hold.wait()
        with b:
            pass
    thread.join()
