"""Generated protocol code (protos/generate.py)."""
