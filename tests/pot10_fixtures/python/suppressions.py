"""Suppression comments in Python."""


def evaluate(expr):
    return eval(expr)  # pot10: allow(R8) expressions come from our own config schema


def evaluate_again(expr):
    # pot10: allow(R8)
    return eval(expr)
