"""R5 near miss: two real assertions everywhere."""


def clamp(x, lo, hi):
    assert lo <= hi
    assert isinstance(x, int), "x must be an int"
    return min(max(x, lo), hi)


def scale(x):
    assert x >= 0
    assert x < 1000
    return 2 * x
