"""R9 does not apply to Python."""


def first(rows):
    return rows[0][0]
