"""Which files of an image-folder tree are images of which class and split: ``[train|val|test/]<class>/<image>``.

One reading of the layout for a folder on disk and for an archive read as a stream (``classiflow.data.archive``):
both give a listing of relative POSIX names, so the same data set gives the same splits, rows and data hash
however it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from classiflow.errors import ClassiflowError

SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class Samples:
    paths: list[str]  # names in the listing
    labels: list[int]


@dataclass
class Tree:
    classes: list[str]
    splits: dict[str, Samples]  # "all" when the tree has no split folders
    root: str = ""  # the folder of the listing that holds the split (or class) folders

    def relative(self, split: str) -> list[str]:
        """The split's files as paths inside the data set (``train/ok/1.png``), for ``data.group_by``."""
        cut = len(self.root) + 1 if self.root else 0
        return [p[cut:] for p in self.splits[split].paths]


@dataclass
class _Node:
    dirs: dict[str, _Node] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def child(self, name: str) -> _Node:
        return self.dirs.setdefault(name, _Node())

    def visible_dirs(self) -> list[str]:
        return sorted(d for d in self.dirs if not d.startswith((".", "__")))

    def visible_files(self) -> list[str]:
        return sorted(f for f in self.files if not f.startswith("."))

    def all_files(self, prefix: str) -> list[str]:
        """Every file below, at any depth, but hidden ones (unsorted)."""
        found = [f"{prefix}/{f}" for f in self.files if not f.startswith(".")]
        for name, node in self.dirs.items():
            found += node.all_files(f"{prefix}/{name}")
        return found


def _build(files: list[str], dirs: list[str]) -> _Node:
    top = _Node()

    def folder(parts: list[str]) -> _Node:
        node = top
        for part in parts:
            node = node.child(part)
        return node

    for name in dirs:
        folder(name.split("/"))
    for name in files:
        *parts, base = name.split("/")
        folder(parts).files.append(base)
    return top


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _unwrap(node: _Node, prefix: str) -> tuple[_Node, str]:
    """Archives often wrap the tree in one top folder: step into it."""
    while True:
        dirs = node.visible_dirs()
        if len(dirs) != 1 or node.visible_files() or dirs[0].lower() in SPLIT_NAMES:
            return node, prefix
        node, prefix = node.dirs[dirs[0]], _join(prefix, dirs[0])


def _class_files(node: _Node, prefix: str, where: str) -> dict[str, list[str]]:
    classes = {}
    for name in node.visible_dirs():
        files = sorted(node.dirs[name].all_files(_join(prefix, name)), key=lambda p: p.split("/"))  # as pathlib sorts
        if not files:
            raise ClassiflowError(f"class folder {_join(where, _join(prefix, name))} holds no images")
        classes[name] = files
    return classes


def scan_names(files: list[str], dirs: list[str], where: str) -> Tree:
    """Classes and splits of a listing (``files`` and ``dirs``: normalised relative POSIX names; ``where`` names it in
    errors). Raises ``ClassiflowError`` for a layout that is no classification data set."""
    node, root = _unwrap(_build(files, dirs), "")
    splits = {SPLIT_NAMES[d.lower()]: d for d in node.visible_dirs() if d.lower() in SPLIT_NAMES}
    if "train" in splits:
        by_split = {key: _class_files(node.dirs[d], _join(root, d), where) for key, d in splits.items()}
    else:
        by_split = {"all": _class_files(node, root, where)}
    classes = sorted(by_split.get("train", by_split.get("all")))
    if len(classes) < 2:
        raise ClassiflowError(
            f"{_join(where, root)}: found {len(classes)} class folder(s) ({', '.join(classes) or 'none'}); "
            "a classifier needs at least two"
        )
    index = {c: i for i, c in enumerate(classes)}
    samples = {}
    for key, files_by_class in by_split.items():
        unknown = sorted(set(files_by_class) - set(classes))
        if unknown:
            raise ClassiflowError(f"{key} split has classes missing from train: {', '.join(unknown)}")
        paths, labels = [], []
        for cls in sorted(files_by_class):
            paths += files_by_class[cls]
            labels += [index[cls]] * len(files_by_class[cls])
        samples[key] = Samples(paths, labels)
    return Tree(classes, samples, root)
