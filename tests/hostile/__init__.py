"""Malformed and hostile inputs for the longctx command line (see corpus.py and tests/test_hostile_inputs.py)."""
