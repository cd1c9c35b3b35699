"""A read-only Btrfs reader for `lukspack check`: own code, since no maintained Btrfs reader is
published under a licence lukspack can ship (dissect.btrfs is AGPL-3.0; libyal has no Btrfs
library). ondisk: the structures; trees: chunks, tree blocks, searches, subvolumes; files: the
inodes, directories and extents of one subvolume."""

from lukspack.check.btrfs.files import BtrfsFS, BtrfsNode
from lukspack.check.btrfs.ondisk import BtrfsError
from lukspack.check.btrfs.trees import Btrfs, Subvolume, read_uuid

__all__ = ["Btrfs", "BtrfsError", "BtrfsFS", "BtrfsNode", "Subvolume", "read_uuid"]
