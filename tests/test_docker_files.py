"""Cheap static checks of the Docker path (Dockerfile, compose.yml, Makefile, .dockerignore).

They need no Docker engine and always run. The real proof, building the image and running
the scenarios in containers, is tests/docker/run.sh (the CI's Docker stage).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MATRIX = ["test-all", "test-prefork", "test-gevent", "test-eventlet", "test-threads", "test-solo"]
DEBUG = ["demo-crash", "demo-gdb", "demo-strace", "demo-fixed", "shell"]
RUNNERS = ["runners", *(f"runners-{r}" for r in ("multiprocessing", "gunicorn", "fastapi", "rq", "huey", "dramatiq",
                                                  "uwsgi"))]
MAKE_TARGETS = ["help", "build", "redis", *MATRIX, "demo-crash", "demo-gdb", "demo-strace",
                "demo-fixed", "shell", "clean", "down", "check", "native-test-all", "native-demo-gdb"]
USER_FILES = ["Dockerfile", "compose.yml", "Makefile", ".dockerignore", "tests/docker/run.sh"]


def read(name: str) -> str:
    return (REPO / name).read_text()


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml")  # PyYAML resolves the x-app/x-debug anchors and merges
    return yaml.safe_load(read("compose.yml"))


def test_dockerfile_base_image_is_a_build_argument_defaulting_to_slim_python() -> None:
    text = read("Dockerfile")
    assert re.search(r"^ARG BASE_IMAGE=python:3\.12-slim$", text, re.M)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, re.M)
    assert "--no-deps --require-hashes -r /tmp/requirements.lock" in text
    assert "pip check" in text
    for tool in ("gdb", "strace", "lsof", "procps"):
        assert re.search(rf"\b{tool}\b", text), tool


def test_dockerignore_keeps_secrets_and_run_output_out() -> None:
    lines = read(".dockerignore").split()
    for entry in (".env", ".venv/", "crash_dumps/*", "chroma_data/", "tests/docker/.build/"):
        assert entry in lines, entry
    assert "!crash_dumps/README.md" in lines


def test_compose_has_one_service_per_scenario(compose: dict) -> None:
    assert set(compose["services"]) == {"redis", *MATRIX, *DEBUG, *RUNNERS, "clean"}


def test_runner_matrix_services_run_the_runner_and_may_ptrace(compose: dict) -> None:
    for name in RUNNERS:
        service = compose["services"][name]
        assert service["entrypoint"] == ["python", "scripts/run_runners.py"], name
        assert "SYS_PTRACE" in service["cap_add"], name
        wanted = ["--all", "--json", "crash_dumps/runners.json"] if name == "runners" else \
            ["--runner", name.removeprefix("runners-")]
        assert service["command"] == wanted, name
    # the image has what the runner matrix starts: its private redis-server, and a compiler for uwsgi
    text = read("Dockerfile")
    for package in ("redis-server", "gcc", "libc6-dev"):
        assert re.search(rf"\b{package}\b", text), package


@pytest.mark.parametrize("service", RUNNERS)
def test_docker_runner_targets_run_their_compose_service(service: str) -> None:
    done = subprocess.run(["make", "-n", "--no-print-directory", f"docker-{service}", "COMPOSE=docker compose"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"docker compose run --rm {service}" in done.stdout


def test_redis_has_healthcheck_overridable_image_and_is_never_published_on_all_interfaces(compose) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("${REDIS_IMAGE:-")
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for port in redis.get("ports", []):
        assert str(port).startswith("127.0.0.1:"), port


def test_nothing_runs_privileged(compose: dict) -> None:
    assert not re.search(r"^\s*privileged\s*:", read("compose.yml"), re.M)
    for name, service in compose["services"].items():
        assert not service.get("privileged"), name


def test_debug_services_may_ptrace_and_dump_core(compose: dict) -> None:
    for name in DEBUG:
        service = compose["services"][name]
        assert "SYS_PTRACE" in service["cap_add"], name
        assert "seccomp:unconfined" in service["security_opt"], name
        assert service["ulimits"]["core"] == -1, name


def test_app_services_write_results_to_the_host_and_use_the_compose_redis(compose: dict) -> None:
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        assert "./crash_dumps:/app/crash_dumps" in service["volumes"], name
        assert "./chroma_data:/app/chroma_data" in service["volumes"], name
        assert service["environment"]["REDIS_URL"] == "redis://redis:6379/0", name
        assert service["build"]["args"]["BASE_IMAGE"] == "${BASE_IMAGE:-python:3.12-slim}", name
    for name in MATRIX:
        service = compose["services"][name]
        assert service["entrypoint"][-2:] == ["--broker", "redis"], name  # a dead Redis is an error
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name


@pytest.mark.skipif(not shutil.which("docker"), reason="docker CLI not installed")
def test_compose_file_is_valid_for_docker_compose() -> None:
    done = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip("Docker Compose v2 plugin not installed")
    done = subprocess.run(["docker", "compose", "-f", str(REPO / "compose.yml"), "config", "-q"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_makefile_has_every_target_and_help_is_the_default() -> None:
    text = read("Makefile")
    assert ".DEFAULT_GOAL := help" in text
    for target in MAKE_TARGETS:
        assert re.search(rf"^{re.escape(target)}:", text, re.M), target
    done = subprocess.run(["make", "--no-print-directory"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    for target in MAKE_TARGETS[1:]:
        assert re.search(rf"^  {re.escape(target)} ", done.stdout, re.M), target


@pytest.mark.parametrize("target", [*MATRIX, "demo-gdb", "shell", "clean"])
def test_docker_targets_run_their_compose_service(target: str) -> None:
    done = subprocess.run(["make", "-n", "--no-print-directory", target, "COMPOSE=docker compose"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"docker compose run --rm {target}" in done.stdout


def test_no_registry_or_mirror_hosts_and_no_forced_pulls() -> None:
    for name in USER_FILES:
        text = read(name)
        assert not re.search(r"\b(https?|ftp)://", text), name
        assert "--pull" not in text and "pull_policy" not in text, name


def test_docker_stage_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(REPO / "tests/docker/run.sh")], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
