"""R3 violation: one allocation in a step function."""
import numpy as np


class Model:
    def __init__(self, n):
        self.buf = np.zeros(n)

    def step(self, x):
        tmp = np.zeros(len(x))
        return tmp + x
