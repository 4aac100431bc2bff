"""Leaves every layer may import: the error tree, model-file readers, value types.

Nothing here imports from ``edged.daemon``, ``edged.backends`` or
``edged.models_registry`` (tests/unit/test_import_contract.py keeps it so).
"""
