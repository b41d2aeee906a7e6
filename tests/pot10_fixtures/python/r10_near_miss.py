"""R10 near miss: compiles cleanly."""
PATTERN = r"\d+"
