"""R8 near miss: static imports, a method named like eval, literal parsing."""
import ast
import importlib


def evaluate(expr, model):
    model.eval()
    return ast.literal_eval(expr), importlib.util
