"""Runnable demo agents built on the schemas/ package."""
