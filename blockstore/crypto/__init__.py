"""Encryption at rest (issue #20): data keys and the keys that wrap them (`keyring`)."""
