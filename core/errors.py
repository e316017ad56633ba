"""Typed errors: the CLI turns them into one clear line on stderr, the API lets callers catch them."""


class AmipsError(Exception):
    """Base class of every error amips raises on purpose."""


class InputError(AmipsError):
    """An input file or array is missing, malformed, or inconsistent with another input."""


class ArtifactError(AmipsError):
    """A model artifact is corrupt, truncated, tampered with, or of an unknown version."""


class UnknownCollectionError(AmipsError):
    """The named collection does not exist in the store."""


class StoreError(AmipsError):
    """The vector store failed or could not be reached."""


class StoreBusyError(StoreError):
    """Another writer held the collection's manifest lock for longer than the wait allowed."""


class ConcurrentPublishError(AmipsError):
    """Another writer published (or removed) a model for the same collection while this one was working."""


class InvalidRequestError(InputError, ValueError):
    """A query argument out of its range (AmipsClient): an InputError, and a ValueError as qdrant-client raises."""
