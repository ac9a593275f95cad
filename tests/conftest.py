"""Puts tests/ on sys.path (pytest does for a conftest's folder): shared helpers import from it."""
