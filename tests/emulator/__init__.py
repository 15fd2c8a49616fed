"""The emulator itself: core, shells, each service's rules, and the TCP fault proxy."""
