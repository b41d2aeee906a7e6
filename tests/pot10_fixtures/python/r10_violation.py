"""R10 violation: one compiler warning (invalid escape sequence)."""
PATTERN = "\d+"
