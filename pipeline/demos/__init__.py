"""Demos: jobs that show the library end to end on the bundled data (run by `make demo`)."""
