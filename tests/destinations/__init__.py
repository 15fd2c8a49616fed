"""Each destination against the emulator; the shared conformance suite; the vendors' clients."""
