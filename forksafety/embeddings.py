"""Provider -> a LangChain ``Embeddings`` object.

``fake`` (the default) is langchain-core's ``DeterministicFakeEmbedding``: offline,
no key, the same vector for the same text. ``openai`` and ``google`` use the
LangChain integrations; their imports happen only when chosen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .settings import Settings

if TYPE_CHECKING:
    from langchain_core.embeddings import Embeddings


def make_embeddings(settings: Settings) -> "Embeddings":
    """Return the embeddings for ``settings.provider``.

    Creating the object makes no network call (the providers connect lazily).
    Raises ValueError for a provider ``load_settings`` would have rejected.
    """
    if settings.provider == "fake":
        from langchain_core.embeddings import DeterministicFakeEmbedding

        return DeterministicFakeEmbedding(size=settings.fake_embedding_size)
    if settings.provider == "openai":
        from langchain_openai import OpenAIEmbeddings

        return OpenAIEmbeddings(model=settings.embedding_model, api_key=settings.api_key)
    if settings.provider == "google":
        from langchain_google_genai import GoogleGenerativeAIEmbeddings

        return GoogleGenerativeAIEmbeddings(
            model=settings.embedding_model, google_api_key=settings.api_key
        )
    raise ValueError(f"unknown provider {settings.provider!r}")
