"""Driving sequences: the in-memory frame representation, generators, readers and writers."""
