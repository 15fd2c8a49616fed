"""What the tests of one service share between its emulator and destination halves."""
