"""The nbdkit Python plugin: the adapter through which an NBD client reaches a disk."""
