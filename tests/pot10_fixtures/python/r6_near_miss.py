"""R6 near miss: constants and function-local state."""
__all__ = ["lookup"]
MAX_ITEMS = 10
NAMES = ("a", "b")


def lookup(key):
    cache = {}
    cache[key] = MAX_ITEMS
    return cache.get(key)
