"""Decode heads shared by several network families."""
