"""How `mlscale curate` is staged on disk, as sets of parallel, resumable work units.

1. filter   one unit per input file (or slice of a large one): read, extract, language,
            quality; writes the shard's surviving documents and its removals
2. exact    keys per shard, then one task per key partition finds duplicate groups
3. near     MinHash signatures and band keys per shard, candidate pairs per band (and
            key partition), clusters by union-find, one survivor per cluster
4. final    per shard: drop the duplicates, write OUT/kept and OUT/removed parts

Every unit writes its files atomically and is then marked done (artifacts.StageDir), so a
rerun skips it; intermediate files live under OUT/.work and are checked before use.
"""
