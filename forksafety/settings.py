"""Settings: ``.env`` file and environment -> one typed, immutable Settings object.

Environment variables win over the ``.env`` file (python-dotenv's ``dotenv_values``
reads the file without touching ``os.environ``). API keys are never shown:
``Settings.redacted()`` is what gets printed or written to logs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .errors import SettingsError

REPO_ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = ("fake", "openai", "google")
DEFAULT_MODELS = {
    "fake": "deterministic-fake",
    "openai": "text-embedding-3-small",
    "google": "models/gemini-embedding-001",
}
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True)
class Settings:
    """Typed settings shared by every entry point.

    provider: embeddings provider, one of ``PROVIDERS``.
    api_key: the provider's key (``None`` for ``fake``); excluded from ``repr``.
    embedding_model: model name passed to the provider.
    fake_embedding_size: vector length (floats) of the fake embeddings.
    redis_url: broker / result backend URL for Redis.
    chroma_dir: folder under which Chroma persist directories are created.
    collection_name: Chroma collection name (3-512 chars, Chroma's own rule).
    """

    provider: str = "fake"
    api_key: str | None = field(default=None, repr=False)
    embedding_model: str = DEFAULT_MODELS["fake"]
    fake_embedding_size: int = 64
    redis_url: str = DEFAULT_REDIS_URL
    chroma_dir: Path = REPO_ROOT / "chroma_data"
    collection_name: str = "forksafety_docs"

    def redacted(self) -> dict[str, str]:
        """Return the settings as strings, with the API key replaced by ``***``."""
        return {
            "provider": self.provider,
            "api_key": "***" if self.api_key else "(none)",
            "embedding_model": self.embedding_model,
            "redis_url": redact_url(self.redis_url),
            "chroma_dir": str(self.chroma_dir),
            "collection_name": self.collection_name,
        }


def redact_url(url: str) -> str:
    """Hide every password in a URL: ``redis://:secret@host:6379/0`` and
    ``redis://host/0?password=secret`` both come back with ``***``."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" not in netloc and not any(k.lower() in ("password", "pass", "pwd")
                                     for k, _ in parse_qsl(parts.query, keep_blank_values=True)):
        return url
    if "@" in netloc:
        creds, host = netloc.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in creds or user == "" else f"{creds}@{host}"
    query = parts.query
    if query:
        pairs = [(k, "***" if k.lower() in ("password", "pass", "pwd") else v)
                 for k, v in parse_qsl(query, keep_blank_values=True)]
        query = urlencode(pairs, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


COLLECTION_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = None
) -> Settings:
    """Build ``Settings`` from ``env_file`` (default ``<repo>/.env``) and ``environ``.

    environ: variables that win over the file (default ``os.environ``).
    Raises SettingsError for an unknown ``PROVIDER``, a missing ``API_KEY`` for
    ``openai``/``google``, or a malformed number; the message names the fix.
    """
    environ = os.environ if environ is None else environ
    env_file = env_file or Path(environ.get("FORKSAFETY_ENV_FILE", REPO_ROOT / ".env"))
    values: dict[str, str | None] = {}
    if env_file.exists() and not env_file.is_file():
        raise SettingsError(f"settings file {env_file} is not a file", "point FORKSAFETY_ENV_FILE at a .env file")
    if env_file.is_file():
        try:
            from dotenv import dotenv_values  # the harness's dependency: the installed tool never reads .env

            values.update(dotenv_values(env_file, encoding="utf-8"))
        except (UnicodeDecodeError, OSError) as exc:
            raise SettingsError(f"cannot read settings file {env_file} ({type(exc).__name__}: {exc})",
                                "save it as UTF-8 text with KEY=value lines (see .env.example)") from None
    values.update(environ)

    def get(name: str, default: str = "") -> str:
        value = values.get(name)
        return default if value is None or value.strip() == "" else value.strip()

    provider = get("PROVIDER", "fake").lower()
    if provider not in PROVIDERS:
        raise SettingsError(
            f"unknown PROVIDER {provider!r}",
            f"set PROVIDER to one of {', '.join(PROVIDERS)} in .env or the environment",
        )
    api_key = get("API_KEY") or None
    if provider != "fake" and not api_key:
        raise SettingsError(
            f"PROVIDER={provider} needs an API key",
            "set API_KEY in .env (see .env.example), or use PROVIDER=fake (offline, no key)",
        )
    size_text = get("FAKE_EMBEDDING_SIZE", "64")
    try:
        size = int(size_text)
        if size < 1:
            raise ValueError
    except ValueError:
        raise SettingsError(
            f"FAKE_EMBEDDING_SIZE must be a positive integer, got {size_text!r}",
            "fix or remove it in .env",
        ) from None
    collection = get("COLLECTION_NAME", "forksafety_docs")
    if not COLLECTION_RE.match(collection) or ".." in collection:
        raise SettingsError(
            f"COLLECTION_NAME {collection!r} is not a valid Chroma collection name",
            "use 3-512 characters from a-z A-Z 0-9 . _ -, starting and ending with a letter or digit",
        )
    chroma_dir = Path(get("CHROMA_DIR", str(REPO_ROOT / "chroma_data"))).expanduser()
    if not chroma_dir.is_absolute():
        chroma_dir = REPO_ROOT / chroma_dir
    return Settings(
        provider=provider,
        api_key=api_key,
        embedding_model=get("EMBEDDING_MODEL", DEFAULT_MODELS[provider]),
        fake_embedding_size=size,
        redis_url=get("REDIS_URL", DEFAULT_REDIS_URL),
        chroma_dir=chroma_dir,
        collection_name=collection,
    )


def check_writable(folder: Path, what: str = "chroma folder",
                   fix: str = "set CHROMA_DIR to a writable folder in .env or the environment") -> None:
    """Create ``folder`` if needed and check a file can be written in it.

    Raises SettingsError naming ``what``, the folder and ``fix`` when it is not writable.
    """
    probe = folder / ".forksafety-write-test"
    if folder.exists() and not folder.is_dir():
        raise SettingsError(f"{what} {folder} is a file, not a folder", fix)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SettingsError(f"{what} {folder} is not writable ({exc.strerror or exc})", fix) from None
