# forksafety: the reproduction harness with gdb, strace, lsof and procps for the demos.
#
#   docker build -t forksafety .                                  # official slim Python 3.12
#   docker build --build-arg BASE_IMAGE=python:3.11-slim -t forksafety .
#
# BASE_IMAGE must be Debian-based with python3 (and its venv module) and apt-get.
# Nothing secret is baked in: .dockerignore keeps .env, .venv, crash_dumps/ and Chroma
# data out of the build context; API keys come from the environment at run time.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# Extra Debian packages, e.g. --build-arg EXTRA_APT_PACKAGES=lldb for scripts/lldb_attach_child.py.
ARG EXTRA_APT_PACKAGES=""

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# redis-server: the runner matrix's private Redis (scripts/run_runners.py); gcc, libc6-dev and
# the Python headers: pip builds uwsgi (an sdist in requirements.lock) from source.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gdb strace lsof procps redis-server gcc libc6-dev ${EXTRA_APT_PACKAGES} \
 && { python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-dev; } \
 && rm -rf /var/lib/apt/lists/*

# The locked dependency tree, every file checked against its hash.
COPY requirements.lock /tmp/requirements.lock
RUN python3 -m venv /opt/venv \
 && pip install --no-deps --require-hashes -r /tmp/requirements.lock \
 && pip check \
 && rm /tmp/requirements.lock

WORKDIR /app
COPY . .
RUN mkdir -p crash_dumps chroma_data

ENV CHROMA_DIR=/app/chroma_data
CMD ["python", "celery_examples/run_test.py", "--all"]
