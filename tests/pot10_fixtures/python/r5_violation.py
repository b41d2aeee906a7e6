"""R5 violation: `scale` has one counted assertion; `assert True` does not count."""


def clamp(x, lo, hi):
    assert lo <= hi
    assert isinstance(x, int)
    return min(max(x, lo), hi)


def scale(x):
    assert x >= 0
    assert True
    return 2 * x
