"""A tiny ``python -m`` target for the child-start tests (tests/unit/test_children.py)."""
