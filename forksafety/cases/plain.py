"""Control case: a plain module (constants and functions). Nothing a fork could break."""

GREETING = "hello from a plain module"


def use() -> str:
    """Return the greeting in capitals."""
    return GREETING.upper()
