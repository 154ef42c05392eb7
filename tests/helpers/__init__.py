"""Helpers shared by the test modules (import as ``from helpers.tiny import tiny_cfg``)."""
