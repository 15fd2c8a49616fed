"""The test suite, one directory per layer (docs/testing.md)."""
