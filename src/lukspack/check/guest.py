"""The guest's file tree: its filesystems mounted where /etc/fstab says, paths resolved the way
the guest's kernel resolves them (symlinks followed, absolute targets from the image's root,
`..` across mounts), which libyal's readers do not do themselves."""

from __future__ import annotations

import posixpath

from lukspack.check.blockio import MAX_FILE
from lukspack.check.filesystems import FileNode, FileSystem

MAX_LINKS = 40  # the kernel's limit (ELOOP)


class Guest:
    def __init__(self, root: FileSystem) -> None:
        self.mounts: dict[str, FileSystem] = {"/": root}

    def mount(self, where: str, fs: FileSystem) -> None:
        self.mounts[posixpath.normpath(where)] = fs

    def resolve(self, path: str, follow: bool = True) -> tuple[str, FileNode] | None:
        """(canonical path, node) of path, or None where a component is missing or loops."""
        stack = [p for p in path.split("/") if p]
        chain: list[tuple[str, FileNode]] = [("/", self.mounts["/"].root)]
        links = 0
        while stack:
            name = stack.pop(0)
            if name == ".":
                continue
            if name == "..":
                if len(chain) > 1:
                    chain.pop()
                continue
            cur, node = chain[-1]
            if not node.is_dir():
                return None
            child_path = posixpath.join(cur, name)
            child = self.mounts[child_path].root if child_path in self.mounts else node.child(name)
            if child is None:
                return None
            if child.is_link() and (stack or follow):
                links += 1
                target = child.link_target()
                if links > MAX_LINKS or not target:
                    return None
                if target.startswith("/"):
                    del chain[1:]
                stack = [p for p in target.split("/") if p] + stack
                continue
            chain.append((child_path, child))
        return chain[-1]

    def node(self, path: str, follow: bool = True) -> FileNode | None:
        got = self.resolve(path, follow)
        return got[1] if got else None

    def realpath(self, path: str) -> str | None:
        got = self.resolve(path)
        return got[0] if got else None

    def is_dir(self, path: str) -> bool:
        n = self.node(path)
        return n is not None and n.is_dir()

    def is_file(self, path: str) -> bool:
        n = self.node(path)
        return n is not None and n.is_file()

    def exists(self, path: str, follow: bool = True) -> bool:
        return self.node(path, follow) is not None

    def read(self, path: str, limit: int = MAX_FILE) -> bytes | None:
        n = self.node(path)
        if n is None or not n.is_file():
            return None
        try:
            return n.read(limit)
        except OSError:  # a damaged file system: the file reads as missing
            return None

    def read_text(self, path: str, limit: int = 1 << 20) -> str | None:
        data = self.read(path, limit)
        return None if data is None else data.decode("utf-8", "replace")

    def listdir(self, path: str) -> list[str]:
        got = self.resolve(path)
        if got is None or not got[1].is_dir():
            return []
        canon, n = got
        names = set(n.names()) - {".", ".."}
        prefix = canon.rstrip("/") + "/"
        names |= {m[len(prefix):] for m in self.mounts
                  if m.startswith(prefix) and m != prefix and "/" not in m[len(prefix):]}
        return sorted(names)

    def link_target(self, path: str) -> str | None:
        n = self.node(path, follow=False)
        return n.link_target() if n is not None and n.is_link() else None
