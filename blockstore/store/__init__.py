"""The object store stack: one interface (`base.ObjectStore`) and one wrapper per file.

Place in the data path: below the volume engine, above S3. `stack.build_store` composes the
layers bottom up (S3 -> retry -> repair for geo disks); `faults` and `memory` are real layers for
tests. Start-up checks and the background health probe of the store live here too.
"""
