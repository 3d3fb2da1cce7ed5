"""Filters: which engines a request may go to. The standard chain, in order, is
``serves_model``, ``healthy``, ``circuit``, ``not_tried``."""

STANDARD = ("serves_model", "healthy", "circuit", "not_tried")
"""The filters of a profile that names none."""
