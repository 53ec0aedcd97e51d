"""Test vectors and golden files (data; see SOURCES.md). make_golden.py regenerates golden/."""
