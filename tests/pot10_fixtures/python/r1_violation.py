"""R1 violation: one direct recursion."""


def depth(node):
    if node is None:
        return 0
    return 1 + depth(node.child)
