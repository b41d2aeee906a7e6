"""R7 near miss: results used; calls without a value are fine as statements."""


def compute(x):
    return x * 2


def log(msg):
    print(msg)


def run(x):
    y = compute(x)
    log(y)
    print(y)
    return compute(y)
