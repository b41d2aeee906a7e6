"""R1 near miss: `step` and `finish` exist in a.py and b.py with opposite
call directions; each call resolves to its own module, so no cycle."""


def step(x):
    return finish(x)


def finish(x):
    return x + 1


class Walker:
    def visit(self, node):
        return node.visit(self)
