"""R3 near miss: allocation at import time and in init code only."""
import numpy as np

TABLE = np.zeros(16)


class Model:
    def __init__(self, n):
        self.buf = np.zeros(n)
        self.history = []

    def step(self, x):
        self.buf[:] = x
        return self.buf


# pot10: init
def prepare(n):
    return list(range(n))
