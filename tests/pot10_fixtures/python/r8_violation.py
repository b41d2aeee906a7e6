"""R8 violation: one eval."""


def evaluate(expr):
    return eval(expr)
