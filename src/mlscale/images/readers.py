"""Finding image inputs and cutting them into work units; reading the items of a unit.

Inputs (files or folders, folders searched recursively):

    IDX (MNIST format)  *images-idx3-ubyte[.gz] paired with *labels-idx1-ubyte[.gz] of the
                        same prefix; "t10k"/"test" in the prefix is the val split
    ImageFolder         DIR/<class>/<image> (or DIR/<train|val|test>/<class>/<image>);
                        images directly in DIR have no label
    CSV                 filepath,caption[,label] (a header row naming filepath is optional);
                        paths relative to the CSV's folder
    WebDataset tar      key.jpg|jpeg|png|webp with key.cls (label), key.txt (caption) or
                        key.json ({"label"|"cls", "caption"|"text"})
    Parquet             an image column ({"bytes", "path"} struct as Hugging Face datasets
                        write it, or binary) with label and/or caption columns

A file whose name has the word train / val / valid / test (as Hugging Face's
"test-00000-of-00001.parquet"), or a folder named exactly so, keeps that split (test -> val).
Every unit is a plain dataclass (pickled to workers); `read_unit` yields `Item`s.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from mlscale.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
IDX_IMAGES = re.compile(r"^(.*)images[-.]idx3[-.]ubyte(\.gz)?$")
FASHION_MNIST = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "val", "t10k": "val"}


@dataclass
class Item:
    """One input image before decoding: raw bytes (or pixels, for IDX) and what is known of it."""

    id: str
    source: str
    data: bytes | np.ndarray | None
    label: str | None = None
    caption: str | None = None
    split: str | None = None
    problem: tuple[str, str] | None = None  # (step, reason) when the item cannot be used


@dataclass
class Unit:
    """A slice of one input that one worker decodes."""

    kind: str  # idx | folder | csv | tar | parquet
    path: str
    start: int = 0
    stop: int = 0
    split: str | None = None
    files: list[str] = field(default_factory=list)  # folder: paths relative to `path`
    extra: dict[str, Any] = field(default_factory=dict)


def _brief(e: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(e).split())


def split_of(name: str) -> str | None:
    """The split a file or folder name declares (train, val, test -> val), or None."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in SPLIT_WORDS:
            return SPLIT_WORDS[word]
    return None


def folder_split(name: str) -> str | None:
    """The split a folder named exactly train / val / valid / validation / test declares."""
    return SPLIT_WORDS.get(name.lower())


def _split_for(p: Path) -> str | None:
    """The split a file declares by a word of its name, or by its folder's whole name."""
    return split_of(p.stem) or folder_split(p.parent.name)


def _chunks(kind: str, path: Path, n: int, size: int, **kw: Any) -> list[Unit]:
    return [Unit(kind, str(path), a, min(a + size, n), **kw) for a in range(0, max(n, 1), size)] if n else []


# ------------------------------------------------------------------------------ planning
def plan_units(inputs: Sequence[str | Path], unit_images: int) -> tuple[list[Unit], list[Path]]:
    """Work units of every input, in a fixed order, and the files they read (to fingerprint)."""
    units: list[Unit] = []
    files: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"input not found: {p}")
        u, f = (_plan_dir(p, unit_images) if p.is_dir() else _plan_file(p, unit_images))
        if not u:
            raise InputError(f"{p}: no images found (expected IDX files, image folders, .csv, .tar "
                             "or .parquet; see mlscale images --help)")
        units += u
        files += f
    return units, files


def _plan_file(p: Path, unit_images: int) -> tuple[list[Unit], list[Path]]:
    name = p.name.lower()
    m = IDX_IMAGES.match(p.name)
    if m:
        return _plan_idx(p, m, unit_images)
    if "labels-idx1" in name:
        return [], []  # read with its images file
    if name.endswith(".tar"):
        return [Unit("tar", str(p), split=_split_for(p))], [p]
    if name.endswith(".parquet"):
        return _plan_parquet(p, unit_images), [p]
    if name.endswith(".csv"):
        return _plan_csv(p, unit_images)
    if name.endswith(IMAGE_EXTS):
        return [Unit("folder", str(p.parent), 0, 1, split=folder_split(p.parent.name), files=[p.name])], [p]
    raise InputError(f"{p}: not a known input (IDX, image, .csv, .tar or .parquet)")


def _plan_dir(root: Path, unit_images: int) -> tuple[list[Unit], list[Path]]:
    units: list[Unit] = []
    files: list[Path] = []
    images: list[str] = []
    for f in sorted(root.rglob("*")):
        if not f.is_file() or any(s.startswith(".") for s in f.relative_to(root).parts):
            continue
        if f.name.lower().endswith(IMAGE_EXTS):
            images.append(str(f.relative_to(root)))
            files.append(f)
        elif f.name.lower().endswith((".tar", ".parquet", ".csv")) or IDX_IMAGES.match(f.name):
            u, fs = _plan_file(f, unit_images)
            units += u
            files += fs
    for a in range(0, len(images), unit_images):
        units.append(Unit("folder", str(root), a, min(a + unit_images, len(images)),
                          split=folder_split(root.name), files=images[a:a + unit_images]))
    return units, files


def _idx_header(path: Path) -> tuple[int, tuple[int, ...]]:
    """(data offset, dims) of an IDX file, reading only its header."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] or head[1] or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise InputError(f"{path} is not an IDX file of unsigned bytes (bad magic {head!r})")
            dims = tuple(int.from_bytes(fh.read(4), "big") for _ in range(head[3]))
    except (OSError, EOFError) as e:
        raise InputError(f"{path} cannot be read as IDX: {_brief(e)}") from None
    return 4 + 4 * len(dims), dims


def _plan_idx(p: Path, m: re.Match, unit_images: int) -> tuple[list[Unit], list[Path]]:
    prefix = m.group(1)
    labels = [q for q in sorted(p.parent.glob(prefix + "labels*idx1*ubyte*"))
              if q.name.endswith(("ubyte", "ubyte.gz"))]
    _, dims = _idx_header(p)
    if len(dims) != 3:
        raise InputError(f"{p}: expected an IDX image file [n, rows, cols], found dims {dims}")
    if labels:
        _, ldims = _idx_header(labels[0])
        if ldims != dims[:1]:
            raise InputError(f"{labels[0]} holds {ldims} labels for the {dims[0]} images of {p}")
    text = str(p).lower()
    classes = FASHION_MNIST if "fashion" in text else None
    extra = {"labels": str(labels[0]) if labels else None, "classes": classes}
    units = _chunks("idx", p, dims[0], unit_images, split=split_of(prefix) or folder_split(p.parent.name),
                    extra=extra)
    return units, [p] + labels[:1]


def _plan_parquet(p: Path, unit_images: int) -> list[Unit]:
    import pyarrow.parquet as pq

    try:
        n = pq.ParquetFile(p).metadata.num_rows
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise InputError(f"{p} is not a readable Parquet file ({_brief(e)})") from None
    return _chunks("parquet", p, n, unit_images, split=_split_for(p))


def _csv_rows(p: Path) -> list[list[str]]:
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{p} cannot be read as UTF-8 CSV ({_brief(e)})") from None
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if rows and rows[0][0].strip().lower() in ("filepath", "path", "file"):
        rows = rows[1:]
    for i, r in enumerate(rows):
        if len(r) not in (2, 3):
            raise InputError(f"{p}: row {i + 1} has {len(r)} fields; expected filepath,caption[,label]")
    return rows


def _plan_csv(p: Path, unit_images: int) -> tuple[list[Unit], list[Path]]:
    rows = _csv_rows(p)
    files = [p] + [f for r in rows if (f := p.parent / r[0]).is_file()]
    return _chunks("csv", p, len(rows), unit_images, split=_split_for(p)), files


# ------------------------------------------------------------------------------- reading
def read_unit(unit: Unit) -> Iterator[Item]:
    """The items of one unit, in a fixed order."""
    reader = {"idx": _read_idx, "folder": _read_folder, "csv": _read_csv, "tar": _read_tar,
              "parquet": _read_parquet}[unit.kind]
    yield from reader(unit)


def _idx_array(path: Path, start: int, stop: int) -> np.ndarray:
    offset, dims = _idx_header(path)
    item = int(np.prod(dims[1:])) if len(dims) > 1 else 1
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            fh.seek(offset + start * item)
            data = fh.read((stop - start) * item)
    except (OSError, EOFError) as e:
        raise InputError(f"{path} is damaged ({_brief(e)})") from None
    if len(data) != (stop - start) * item:
        raise InputError(f"{path} is truncated: it ends before item {stop} of {dims[0]}")
    return np.frombuffer(data, dtype=np.uint8).reshape((stop - start, *dims[1:]))


def _read_idx(unit: Unit) -> Iterator[Item]:
    path = Path(unit.path)
    images = _idx_array(path, unit.start, unit.stop)
    labels = _idx_array(Path(unit.extra["labels"]), unit.start, unit.stop) if unit.extra["labels"] else None
    classes = unit.extra["classes"]
    for i in range(len(images)):
        label = None
        if labels is not None:
            v = int(labels[i])
            label = classes[v] if classes and v < len(classes) else str(v)
        yield Item(f"{path.name}#{unit.start + i}", path.name, images[i], label, split=unit.split)


def _read_file(path: Path) -> tuple[bytes | None, tuple[str, str] | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, ("read", "missing file")
    except OSError:
        return None, ("read", "unreadable file")


def _read_folder(unit: Unit) -> Iterator[Item]:
    root = Path(unit.path)
    for rel in unit.files:
        parts = Path(rel).parts
        inner = folder_split(parts[0]) if len(parts) > 2 else None
        split = inner or unit.split
        label = parts[-2] if len(parts) > (2 if inner else 1) else None
        data, problem = _read_file(root / rel)
        yield Item(rel, str(root / rel), data, label, split=split, problem=problem)


def _read_csv(unit: Unit) -> Iterator[Item]:
    p = Path(unit.path)
    for i, row in enumerate(_csv_rows(p)[unit.start:unit.stop], unit.start):
        data, problem = _read_file(p.parent / row[0])
        label = row[2].strip() or None if len(row) > 2 else None
        yield Item(f"{p.name}#{i}", str(p.parent / row[0]), data, label, row[1] or None,
                   split=unit.split, problem=problem)


def _tar_members(p: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of a WebDataset shard, keys in first-seen order."""
    groups: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(p, "r:*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                if "." not in base or base.startswith("."):
                    continue
                stem, ext = base.split(".", 1)
                key = m.name[: len(m.name) - len(base)] + stem
                fh = tar.extractfile(m)
                groups.setdefault(key, {})[ext.lower()] = fh.read() if fh else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{p} is not a readable tar file ({_brief(e)})") from None
    return groups


def _tar_labels(files: dict[str, bytes]) -> tuple[str | None, str | None]:
    label = files["cls"].decode("utf-8", "replace").strip() if "cls" in files else None
    caption = files["txt"].decode("utf-8", "replace").strip() if "txt" in files else None
    if "json" in files:
        try:
            obj = json.loads(files["json"])
        except (ValueError, UnicodeDecodeError):
            obj = {}
        if isinstance(obj, dict):
            lab = obj.get("label", obj.get("cls"))
            label = label if label is not None or lab is None else str(lab)
            cap = obj.get("caption", obj.get("text"))
            caption = caption if caption is not None or cap is None else str(cap)
    return label or None, caption or None


def _read_tar(unit: Unit) -> Iterator[Item]:
    p = Path(unit.path)
    for key, files in _tar_members(p).items():
        ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in files), None)
        if ext is None:
            continue  # metadata without an image: nothing to keep or remove
        label, caption = _tar_labels(files)
        problem = None if (label or caption or "json" in files) else ("read", "tar member without its label")
        yield Item(f"{p.name}#{key}", f"{p}:{key}.{ext}", files[ext], label, caption,
                   split=unit.split, problem=problem)


def _parquet_columns(names: Sequence[str], types: Sequence[Any]) -> tuple[str, str | None, str | None]:
    import pyarrow as pa

    image = next((n for n, t in zip(names, types) if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0),
                 None) or next((n for n, t in zip(names, types) if pa.types.is_binary(t)
                                or pa.types.is_large_binary(t)), None)
    label = next((n for n in ("label", "labels", "cls", "class") if n in names), None)
    caption = next((n for n in ("caption", "text", "captions") if n in names), None)
    if image is None:
        raise InputError("no image column (a {bytes, path} struct or binary column)")
    return image, label, caption


def _hf_label_names(schema: Any, label: str | None) -> list[str] | None:
    """The ClassLabel names Hugging Face datasets store in the Parquet schema metadata."""
    meta = (schema.metadata or {}).get(b"huggingface")
    if not meta or not label:
        return None
    try:
        feats = json.loads(meta)["info"]["features"][label]
        names = feats.get("names")
        return [str(n) for n in names] if isinstance(names, list) else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _parquet_rows(pf: Any, start: int, stop: int) -> Any:
    """Rows start..stop of a Parquet file, reading only the row groups that hold them."""
    sizes = [pf.metadata.row_group(k).num_rows for k in range(pf.metadata.num_row_groups)]
    ends = np.cumsum(sizes)
    groups = [k for k in range(len(sizes)) if ends[k] > start and ends[k] - sizes[k] < stop]
    first = int(ends[groups[0]] - sizes[groups[0]]) if groups else 0
    table = pf.read_row_groups(groups) if groups else pf.schema_arrow.empty_table()
    return table.slice(start - first, stop - start)


def _read_parquet(unit: Unit) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = Path(unit.path)
    try:
        table = _parquet_rows(pq.ParquetFile(p), unit.start, unit.stop)
        image, label, caption = _parquet_columns(table.column_names, [f.type for f in table.schema])
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"{p} is not a readable Parquet file ({_brief(e)})") from None
    except InputError as e:
        raise InputError(f"{p}: {e}") from None
    names = _hf_label_names(table.schema, label)
    cells = table.column(image).to_pylist()
    labels = table.column(label).to_pylist() if label else [None] * len(cells)
    captions = table.column(caption).to_pylist() if caption else [None] * len(cells)
    for i, (cell, lab, cap) in enumerate(zip(cells, labels, captions)):
        data = cell.get("bytes") if isinstance(cell, dict) else cell
        if lab is not None:
            lab = names[lab] if names and isinstance(lab, int) and 0 <= lab < len(names) else str(lab)
        yield Item(f"{p.name}#{unit.start + i}", str(p), data, lab, cap, split=unit.split,
                   problem=None if data else ("read", "no image bytes"))


def class_order(unit: Unit) -> list[str] | None:
    """Class names in label order that the input itself declares (IDX, HF Parquet), if any."""
    if unit.kind == "idx":
        return unit.extra.get("classes")
    if unit.kind == "parquet":
        import pyarrow.parquet as pq

        schema = pq.read_schema(unit.path)
        try:
            _, label, _ = _parquet_columns(schema.names, schema.types)
        except InputError:
            return None
        return _hf_label_names(schema, label)
    return None
