"""Inference backends behind one small interface (see :mod:`edged.backends.base`)."""
