"""Pickers: one engine from the scorers' weighted totals."""
