"""Offline scoring: read events from a file, build columns, run the compiled graph, print scores."""
