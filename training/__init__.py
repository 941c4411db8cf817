"""Offline training: synthetic catalogues, embedding models, detector, evaluation and export.

Importing this package is cheap; modules that need torch import it themselves.
"""
