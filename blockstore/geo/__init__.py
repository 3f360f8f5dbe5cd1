"""Geo-replication of `grs` disks: copy a disk's log to a second region, in log order.

Off the data path: a background copier per disk, plus the status (lag, RPO) the control plane
reports. The copy is always a consistent prefix of the primary log. Its parts:

- `config`: the replicator's settings (its window is the engine's fence window);
- `replicator`: `DiskReplicator`, one disk's copier and its pass;
- `frontier`: where a copy's log ends, and the cuts a failover and a failback make there;
- `gc`: the secondary's garbage collection (mirrored deletions);
- `lag`: how far the copy is behind what the primary acknowledged, measured on both stores;
- `progress`: the replicator's counters and its progress marker;
- `service`: `ReplicationService`, the per-host thread over every replicated disk;
- `delete`: removing a whole copy.

The control plane (blockstore/control/geo.py) drives it; keys are built and parsed only
through blockstore/format/keys.py.
"""
