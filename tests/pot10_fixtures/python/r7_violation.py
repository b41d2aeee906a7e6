"""R7 violation: one ignored return value."""


def compute(x):
    return x * 2


def run(x):
    compute(x)
    return x
