"""Platform and library versions for headers and JSON records.

Versions come from installed package metadata (importlib.metadata), so reading
them imports none of the libraries (chromadb stays unimported in the runner).
"""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata

PACKAGES = ("celery", "billiard", "kombu", "redis", "chromadb", "langchain-chroma", "langchain-core",
            "gevent", "eventlet", "psutil", "py-spy", "pystack")


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """``{package: version}`` for the installed packages; missing ones are ``"not installed"``."""
    found = {}
    for name in packages:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def platform_record() -> dict[str, object]:
    """Platform facts: OS, kernel, architecture, Python, libc."""
    libc = " ".join(platform.libc_ver()).strip()
    return {
        "platform": sys.platform,
        "system": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "libc": libc or "unknown",
    }


def header_lines(command: list[str] | None = None, title: str = "") -> list[str]:
    """Lines for the top of every crash_dumps file: command, platform, versions, time (UTC)."""
    plat = platform_record()
    lines = [f"# forksafety {title}".rstrip(),
             f"# command: {' '.join(command if command is not None else sys.argv)}",
             f"# platform: {plat['system']} {plat['machine']} ({plat['libc']})",
             f"# python: {plat['python']} ({plat['implementation']})",
             "# versions: " + ", ".join(f"{k} {v}" for k, v in package_versions().items()),
             f"# time: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
    return lines
