"""R2 near miss: counter and collection loops."""


def total(values, n):
    i = 0
    s = 0
    while i < n:
        s += values[i]
        i += 1
    for k in range(n):
        s += k
    for v in values:
        s += v
    return s
