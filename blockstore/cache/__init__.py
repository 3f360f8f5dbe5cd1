"""The host cache: the layer between the NBD plugin and a volume, in one of three modes.

Place in the data path: called by `nbd_plugin/plugin.py`, calls `engine.volume.Volume`. In
`readwrite` mode a local journal makes a flush durable before the segment upload finishes.
"""
