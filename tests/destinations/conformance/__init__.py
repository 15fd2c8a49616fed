"""Destination conformance suite: every scenario once, for every registered type."""
