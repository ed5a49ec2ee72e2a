"""`kvplan demo`: the whole stack on one machine (see run.py)."""
