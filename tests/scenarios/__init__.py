"""The failure scenarios of docs/guarantees.md that need the daemon."""
