"""The one vocabulary of ``--variant`` names: what each name means and which products run it.

A variant is where the store is created relative to the fork, or which fix is applied.
The Celery matrix (``harness.VARIANTS``: ``run_test.py --variant``) and the fork demo
(``demo.VARIANTS``: ``demo_crash.py --variant``, ``gdb_attach_child.py --variant``) each
implement a subset; a name means the same thing in both. Where the same idea exists in
both products it has one name (``module-level``, ``lazy``, ``lazy-in-task``). The demo's
names from before 2026-12 (``inherited``, ``parent-never-opened``, ``same-dir-new-client``)
are accepted as aliases and resolve to the one name.

This module is foundation: it imports nothing from the package but ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

CELERY = "celery"
DEMO = "demo"
PRODUCT_TITLES = {CELERY: "the Celery matrix (run_test.py)", DEMO: "the fork demo (demo_crash.py)"}


@dataclass(frozen=True)
class VariantName:
    """One ``--variant`` name.

    name: the one spelling. meaning: what it sets up, the same in every product.
    products: the products that run it (``CELERY``, ``DEMO``). aliases: older
    spellings that resolve to ``name``.
    """

    name: str
    meaning: str
    products: frozenset[str]
    aliases: tuple[str, ...] = ()


VOCABULARY: dict[str, VariantName] = {v.name: v for v in (
    VariantName("module-level", "the bug: the store is created before the fork (at import) and the child "
                "uses the object it inherited", frozenset({CELERY, DEMO}), ("inherited",)),
    VariantName("worker-process-init", "each pool child opens the store from Celery's worker_process_init "
                "signal, after the fork", frozenset({CELERY})),
    VariantName("fixed", "the parent never imports chromadb nor opens the store; the child opens it after "
                "the fork", frozenset({DEMO})),
    VariantName("lazy", "the parent imports chromadb and LangChain but opens no store; each child opens "
                "its own on first use, after the fork", frozenset({CELERY, DEMO}), ("parent-never-opened",)),
    VariantName("lazy-in-task", "the store created before the fork stays, and the child creates a new one "
                "for the same persist_directory (chromadb hands back the parent's cached client)",
                frozenset({CELERY, DEMO}), ("same-dir-new-client",)),
    VariantName("spawn", "the module-level store, with pool children started by spawn",
                frozenset({CELERY})),
    VariantName("forkserver", "the module-level store, with pool children started by forkserver",
                frozenset({CELERY})),
    VariantName("segment-api", "the module-level store through chromadb's Python SegmentAPI "
                "(chroma_api_impl setting), which skips the Rust bindings where the version still has it",
                frozenset({CELERY})),
    VariantName("chroma-server", "a real Chroma server (chroma run on a loopback port) and a module-level "
                "chromadb.HttpClient: the worker holds an HTTP client; the store lives in the server, "
                "which is never forked",
                frozenset({CELERY})),
    VariantName("other-dir", "the parent opened the store; the child creates a new one in another "
                "persist_directory", frozenset({DEMO})),
    VariantName("clear-system-cache", "the parent opened the store; the child clears chromadb's client "
                "cache, then creates a new one for the same folder", frozenset({DEMO})),
    VariantName("close-before-fork", "the parent opens the store, then drops it and clears chromadb's "
                "client cache before the fork; the child opens the same folder again", frozenset({DEMO})),
)}

ALIASES: dict[str, str] = {alias: v.name for v in VOCABULARY.values() for alias in v.aliases}


def variant_names(product: str) -> list[str]:
    """The names ``product`` (``CELERY`` or ``DEMO``) runs, in vocabulary order."""
    return [v.name for v in VOCABULARY.values() if product in v.products]


def resolve_variant(name: str, product: str) -> str:
    """The one spelling of variant ``name`` for ``product`` (an alias resolves to its name).

    Raises UsageError (exit 2) for a name that is not in the vocabulary, or that
    ``product`` does not run; the message names the product that does, and the help
    lists the names ``product`` runs.
    """
    canonical = ALIASES.get(name, name)
    entry = VOCABULARY.get(canonical)
    names = ", ".join(variant_names(product))
    if entry is None:
        raise UsageError(f"unknown variant {name!r}", f"use one of {names}")
    if product not in entry.products:
        others = " and ".join(PRODUCT_TITLES[p] for p in sorted(entry.products))
        raise UsageError(f"variant {canonical!r} is run by {others}, not by {PRODUCT_TITLES[product]}",
                         f"use one of {names}")
    return canonical
