"""blockstore: durable virtual disks in S3-compatible object storage, served over NBD."""

__version__ = "0.1.0"
