"""Secrets: stored encrypted, referenced by name, resolved only where they are used."""
