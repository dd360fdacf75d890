"""Reading recordings topic by topic: rosbag2 (MCAP, sqlite3) and ROS 1 bags, with ``rosbags``.

``rosbags``' ``AnyReader`` registers the message definitions of *every* topic before it reads any,
so one topic whose embedded schema it cannot parse makes the whole recording unreadable. Here each
topic's definition is parsed on its own (:meth:`BagReader.typestore_for` registers only the topics
asked for); topics whose definition cannot be parsed are listed in :attr:`BagReader.unparsed` and
skipped, the others read as usual.

What a path is gets decided by its content where the name leaves it open (:func:`sniff_recording`):
a file starting with MCAP's, SQLite's or ROS 1's magic bytes is a recording whatever its suffix
(suffixes are matched case-insensitively anyway), and a rosbag2 folder whose ``metadata.yaml`` names
no (or an unknown) storage plugin is read from its storage files, the plugin chosen by their content.
"""
from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Leading bytes of each recording format.
MAGICS: dict[str, bytes] = {
    "mcap": b"\x89MCAP0\r\n",
    "sqlite3": b"SQLite format 3\x00",
    "rosbag1": b"#ROSBAG V2.0\n",
}
#: Suffixes (lower case) that name a recording file.
RECORDING_SUFFIXES: dict[str, str] = {".mcap": "mcap", ".db3": "sqlite3", ".bag": "rosbag1"}
_FORMAT_NAMES = {"mcap": "an MCAP file", "sqlite3": "a rosbag2 sqlite3 file", "rosbag1": "a ROS 1 bag"}
_IDL_SEPARATOR = "=" * 80 + "\n"


class BagError(ValueError):
    """A recording that cannot be read as asked; the message is one line without the path."""


def sniff_recording(path: Path) -> str | None:
    """``"mcap"``, ``"sqlite3"`` or ``"rosbag1"`` from a file's first bytes; None for anything else."""
    try:
        with path.open("rb") as handle:
            head = handle.read(max(len(m) for m in MAGICS.values()))
    except OSError:
        return None
    return next((kind for kind, magic in MAGICS.items() if head.startswith(magic)), None)


def is_recording(path: Path) -> bool:
    """True for a rosbag2 folder (with ``metadata.yaml``) or a recording file (by content or suffix)."""
    if path.is_dir():
        return (path / "metadata.yaml").is_file()
    return sniff_recording(path) is not None or path.suffix.lower() in RECORDING_SUFFIXES


@dataclass(frozen=True)
class TopicInfo:
    """One topic of a recording: its message type and how many messages it holds."""

    name: str
    msgtype: str
    count: int


@dataclass
class _Storage:
    """What rosbags opened: one or several readers with ``open/close/connections/messages``."""

    readers: list[Any]
    ros1: bool = False
    decompress: Any = None  # rosbag2 per-message compression, for folders read file by file


@dataclass
class BagReader:
    """A recording open for reading (a context manager); see the module docstring.

    Attributes after entering: :attr:`topics` (name → :class:`TopicInfo`, parseable topics only),
    :attr:`unparsed` (topic → why its message definition cannot be used).
    """

    path: Path
    topics: dict[str, TopicInfo] = field(init=False, default_factory=dict)
    unparsed: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._storage: _Storage | None = None
        self._types: dict[str, dict[str, Any]] = {}  # topic -> its parsed definitions
        self._digests: dict[str, str] = {}  # topic -> recorded type hash
        self._has_definitions = False

    # -- opening ----------------------------------------------------------------------------------

    def __enter__(self) -> BagReader:
        self._storage = _open_storage(self.path)
        try:
            for reader in self._storage.readers:
                reader.open()
            self._index()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        storage, self._storage = self._storage, None
        if storage is None:
            return
        for reader in storage.readers:
            try:
                reader.close()
            except Exception:  # noqa: BLE001 - a reader that failed to open cannot close either
                pass

    @property
    def connections(self) -> list[Any]:
        assert self._storage is not None, "BagReader is not open"
        return [c for reader in self._storage.readers for c in reader.connections]

    @property
    def is_ros1(self) -> bool:
        return bool(self._storage and self._storage.ros1)

    def _index(self) -> None:
        """Parse each topic's definition on its own; fill :attr:`topics` and :attr:`unparsed`."""
        from rosbags.interfaces import MessageDefinitionFormat

        by_topic: dict[str, list[Any]] = {}
        for connection in self.connections:
            by_topic.setdefault(connection.topic, []).append(connection)
        self._has_definitions = any(c.msgdef.format != MessageDefinitionFormat.NONE
                                    for c in self.connections)
        for topic, connections in sorted(by_topic.items()):
            msgtypes = sorted({c.msgtype for c in connections})
            if len(msgtypes) != 1:
                self.unparsed[topic] = f"several message types ({', '.join(msgtypes)})"
                continue
            try:
                types: dict[str, Any] = {}
                for connection in connections:
                    types.update(_definitions(connection))
                self._check_standalone(msgtypes[0], types, connections)
            except Exception as exc:  # noqa: BLE001 - rosbags raises several unrelated types
                self.unparsed[topic] = f"{msgtypes[0]}: {_one_line(exc)}"
                continue
            self._types[topic] = types
            self.topics[topic] = TopicInfo(topic, msgtypes[0], sum(c.msgcount for c in connections))

    def _check_standalone(self, msgtype: str, types: dict[str, Any], connections: list[Any]) -> None:
        """The definitions register on their own and give the recorded type hash."""
        store = self._store(types)
        if msgtype not in store.fielddefs:
            raise BagError(f"no definition of {msgtype} in the recording")
        try:  # walks every nested type: one the definitions do not declare fails here
            store.generate_msgdef(msgtype, ros_version=1 if self.is_ros1 else 2)
        except KeyError as exc:
            raise BagError(f"uses type {exc.args[0]}, which the recording does not define") from None
        for connection in connections:
            if not connection.digest or not types:
                continue
            have = (store.generate_msgdef(msgtype)[1] if self.is_ros1
                    else store.hash_rihs01(msgtype))
            if have != connection.digest:
                raise BagError(f"type hash mismatch ({have} != recorded {connection.digest})")

    def _store(self, types: dict[str, Any]) -> Any:
        """A typestore with ``types``, or ROS 2 Jazzy's for recordings without definitions."""
        from rosbags.typesys import Stores, get_typestore

        if not self._has_definitions:
            return get_typestore(Stores.ROS2_JAZZY)
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        return store

    # -- reading ----------------------------------------------------------------------------------

    def typestore_for(self, topics: Iterable[str]) -> Any:
        """One typestore holding the message types of ``topics`` (all parseable)."""
        merged: dict[str, Any] = {}
        for topic in topics:
            merged.update(self._types[topic])
        return self._store(merged)

    def messages(self, topics: Sequence[str]) -> Iterator[tuple[str, int, bytes]]:
        """``(topic, log time ns, raw bytes)`` of ``topics`` in log-time order."""
        assert self._storage is not None, "BagReader is not open"
        wanted = set(topics)
        streams = []
        for reader in self._storage.readers:
            connections = [c for c in reader.connections if c.topic in wanted]
            if connections:
                streams.append(reader.messages(connections=connections))
        decompress = self._storage.decompress
        for connection, log_time, raw in heapq.merge(*streams, key=lambda item: item[1]):
            yield connection.topic, int(log_time), decompress(raw) if decompress else raw

    def deserializer(self, topics: Iterable[str]) -> Any:
        """``deserialize(raw, msgtype)`` for messages of ``topics`` (CDR, or ROS 1 for ROS 1 bags)."""
        store = self.typestore_for(topics)
        return store.deserialize_ros1 if self.is_ros1 else store.deserialize_cdr


def _definitions(connection: Any) -> dict[str, Any]:
    """The types a connection's embedded definition declares (empty when it has none)."""
    from rosbags.interfaces import MessageDefinitionFormat
    from rosbags.typesys import get_types_from_idl, get_types_from_msg

    msgdef = connection.msgdef
    if msgdef.format == MessageDefinitionFormat.NONE:
        return {}
    if msgdef.format == MessageDefinitionFormat.MSG:
        return dict(get_types_from_msg(msgdef.data, connection.msgtype))
    types: dict[str, Any] = {}
    if msgdef.data.startswith(f"{_IDL_SEPARATOR}IDL: "):
        for part in msgdef.data.split(_IDL_SEPARATOR)[1:]:
            _, idl = part.split("\n", 1)
            types.update(get_types_from_idl(idl))
    else:
        types.update(get_types_from_idl(msgdef.data))
    return types


def _open_storage(path: Path) -> _Storage:
    """The rosbags reader(s) for ``path`` (not yet opened); :class:`BagError` when none fits."""
    from rosbags.rosbag1 import Reader as Rosbag1Reader
    from rosbags.rosbag2 import Reader as Rosbag2Reader

    plugins = Rosbag2Reader.STORAGE_PLUGINS  # "dir", ".mcap", ".db3" -> storage reader class
    if path.is_dir():
        metadata = _read_metadata(path)
        if metadata.get("storage_identifier") in ("mcap", "sqlite3"):
            return _Storage([plugins["dir"](path)])
        return _storage_files(path, metadata, plugins)
    kind = sniff_recording(path)
    if kind is None:
        expected = _FORMAT_NAMES.get(RECORDING_SUFFIXES.get(path.suffix.lower(), ""), "a recording")
        raise BagError(f"not {expected}: it starts with none of the MCAP, SQLite and ROS 1 bag "
                       "magic bytes")
    if kind == "rosbag1":
        return _Storage([Rosbag1Reader(path)], ros1=True)
    return _Storage([plugins[".mcap" if kind == "mcap" else ".db3"](path)])


def _read_metadata(folder: Path) -> dict[str, Any]:
    from ruamel.yaml import YAML

    try:
        data = YAML(typ="safe").load((folder / "metadata.yaml").read_text("utf-8"))
        return dict(data["rosbag2_bagfile_information"])
    except Exception as exc:  # noqa: BLE001 - unreadable YAML, a missing key, not a mapping
        raise BagError(f"unreadable metadata.yaml ({_one_line(exc)})") from None


def _storage_files(folder: Path, metadata: dict[str, Any], plugins: Any) -> _Storage:
    """A folder whose metadata names no known storage plugin: its files, by their content."""
    mode = str(metadata.get("compression_mode") or "").lower()
    if mode == "file":
        raise BagError(f"storage_identifier {metadata.get('storage_identifier')!r} is unknown and the "
                       "files are compressed whole; set storage_identifier to mcap or sqlite3")
    names = [str(n) for n in metadata.get("relative_file_paths") or []]
    files = [folder / n for n in names] or sorted(p for p in folder.iterdir() if p.is_file()
                                                   and p.name != "metadata.yaml")
    readers = []
    for file in files:
        kind = sniff_recording(file)
        if kind not in ("mcap", "sqlite3"):
            raise BagError(f"storage_identifier {metadata.get('storage_identifier')!r} is unknown and "
                           f"{file.name} is neither MCAP nor SQLite")
        readers.append(plugins[".mcap" if kind == "mcap" else ".db3"](file))
    if not readers:
        raise BagError("metadata.yaml lists no storage file and the folder holds none")
    log.debug("%s: storage_identifier %r in metadata.yaml; reading the files by their content (%s)",
             folder, metadata.get("storage_identifier"), ", ".join(f.name for f in files))
    return _Storage(readers, decompress=_zstd_decompress() if mode == "message" else None)


def _zstd_decompress() -> Any:
    """zstd's ``decompress`` (Python 3.14's ``compression.zstd``, else the backport rosbags uses)."""
    try:
        from compression import zstd  # type: ignore[import-not-found]
    except ImportError:
        from backports import zstd  # type: ignore[no-redef]
    return zstd.decompress


def _one_line(exc: BaseException) -> str:
    """One line for an exception; a parser's "Could not parse: <text> <position> <line>" becomes
    "Could not parse at '<line>'"."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0][:-1]} at {lines[-1]!r}"
    return " ".join(lines) or type(exc).__name__
