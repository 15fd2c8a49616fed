"""The real daemon as a process, end to end."""
