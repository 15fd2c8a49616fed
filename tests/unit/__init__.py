"""One module or stage at a time, in process."""
