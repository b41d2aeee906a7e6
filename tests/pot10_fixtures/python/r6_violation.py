"""R6 violation: one mutable module-level object."""
MAX_ITEMS = 10
CACHE = {}


def lookup(key):
    return CACHE.get(key, MAX_ITEMS)
