"""Bytes at rest: object key names and the segment and checkpoint codecs.

Place in the data path: the last step before the object store. Nothing here does I/O; every
decoder returns a whole value or raises `Corrupt`, so a torn or foreign object is never half read.
"""
