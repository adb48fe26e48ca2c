"""Wire compatibility: the compiled descriptors of flexlb.pb match the tables of rtp-llm-wire.md.

The facts of the reference document (its message, enum and service tables, read by the parser below)
ship with the repo as tests/data/rtp_llm_wire.json; with FLEXLB_WIRE_DOC set, the document itself is
parsed instead (`python tests/test_wire_compat.py DOC` rewrites the JSON from it). For every message
table the field numbers, names, types and labels, the reserved numbers/names, the nested types and
the declaring file must match; for every enum the value -> name pairs; for every service method
the wire path, the request/response types and the streaming kind, both in the descriptor and in
the generated client stubs and server registration helpers.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor

from flexlb.pb import flexlb_schedule_service_pb2 as flexlb_pb
from flexlb.pb import flexlb_schedule_service_pb2_grpc as flexlb_grpc
from flexlb.pb import model_rpc_service_pb2 as model_pb
from flexlb.pb import model_rpc_service_pb2_grpc as model_grpc

ROOT = Path(__file__).resolve().parent.parent
FACTS = ROOT / "tests" / "data" / "rtp_llm_wire.json"  # the document's tables, as data

FILES: dict[str, FileDescriptor] = {
    "model_rpc_service.proto": model_pb.DESCRIPTOR,
    "flexlb_schedule_service.proto": flexlb_pb.DESCRIPTOR,
}
GRPC_MODULES: dict[str, Any] = {
    "model_rpc_service.proto": model_grpc,
    "flexlb_schedule_service.proto": flexlb_grpc,
}

# ---------------------------------------------------------------------------------------------- parsing


@dataclass
class FieldRow:
    number: int
    name: str
    type: str
    label: str


@dataclass
class MessageTable:
    name: str
    file: str
    line: int
    fields: list[FieldRow] = field(default_factory=list)
    empty: bool = False
    reserved_numbers: set[int] = field(default_factory=set)
    reserved_names: set[str] = field(default_factory=set)
    nested: set[str] = field(default_factory=set)


@dataclass
class EnumTable:
    name: str
    file: str
    line: int
    values: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class MethodRow:
    name: str
    path: str
    request: str
    response: str
    kind: str


@dataclass
class ServiceTable:
    name: str
    file: str
    line: int
    methods: list[MethodRow] = field(default_factory=list)


@dataclass
class WireDoc:
    messages: dict[str, MessageTable] = field(default_factory=dict)
    enums: dict[str, EnumTable] = field(default_factory=dict)
    services: dict[str, ServiceTable] = field(default_factory=dict)


class DocParseError(AssertionError):
    """The reference document does not have the expected shape."""


_MESSAGE_HEAD = re.compile(r"^####\s+`([A-Za-z_][\w.]*)`\s+\((\w+\.proto)\)\s*$")
_ENUM_HEAD = re.compile(r"^####\s+enum\s+`([A-Za-z_][\w.]*)`\s+\((\w+\.proto)\)\s*$")
_SERVICE_HEAD = re.compile(r"^###\s+service\s+`(\w+)`\s+\(declared in (\w+\.proto)\)\s*$")
_SEPARATOR = re.compile(r"^\|(\s*:?-+:?\s*\|)+\s*$")
_BACKTICKED = re.compile(r"`([^`]+)`")


def _cells(line: str) -> list[str]:
    body = line.strip()
    if not (body.startswith("|") and body.endswith("|")):
        raise ValueError("not a table row")
    return [c.strip() for c in body[1:-1].split("|")]


def _parse_numbers(text: str, where: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*(?:-|to)\s*(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise DocParseError(f"{where}: bad reserved range {part!r}")
            out.update(range(lo, hi + 1))
        elif part.isdigit():
            out.add(int(part))
        else:
            raise DocParseError(f"{where}: cannot read reserved number {part!r}")
    return out


def parse_wire_doc(text: str) -> WireDoc:
    """Parse the message, enum and service tables of rtp-llm-wire.md.

    A block starts at its heading and runs until the next heading or the first line that is
    not part of it; a malformed row inside a block is an error rather than silently skipped.
    """
    doc = WireDoc()
    current: MessageTable | EnumTable | ServiceTable | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        where = f"line {lineno}"
        if line.startswith("#"):
            current = None
            if m := _SERVICE_HEAD.match(line):
                if m.group(1) in doc.services:
                    raise DocParseError(f"{where}: service {m.group(1)} documented twice")
                current = doc.services[m.group(1)] = ServiceTable(m.group(1), m.group(2), lineno)
            elif m := _ENUM_HEAD.match(line):
                if m.group(1) in doc.enums:
                    raise DocParseError(f"{where}: enum {m.group(1)} documented twice")
                current = doc.enums[m.group(1)] = EnumTable(m.group(1), m.group(2), lineno)
            elif m := _MESSAGE_HEAD.match(line):
                if m.group(1) in doc.messages:
                    raise DocParseError(f"{where}: message {m.group(1)} documented twice")
                current = doc.messages[m.group(1)] = MessageTable(m.group(1), m.group(2), lineno)
            elif line.startswith("####"):
                raise DocParseError(f"{where}: unrecognised table heading {line!r}")
            continue
        if current is None or not line.strip():
            continue
        stripped = line.strip()
        if isinstance(current, ServiceTable):
            if not stripped.startswith("|"):
                current = None
                continue
            if _SEPARATOR.match(stripped):
                continue
            cells = _cells(stripped)
            if cells[0] == "method":
                if cells != ["method", "wire path (HTTP/2 `:path`)", "request", "response", "kind"]:
                    raise DocParseError(f"{where}: unexpected service table header {cells}")
                continue
            if len(cells) != 5:
                raise DocParseError(f"{where}: service row needs 5 cells, got {cells}")
            path = cells[1].strip("`")
            current.methods.append(MethodRow(cells[0], path, cells[2], cells[3], cells[4]))
        elif isinstance(current, EnumTable):
            if not stripped.startswith("|"):
                current = None
                continue
            if _SEPARATOR.match(stripped):
                continue
            cells = _cells(stripped)
            if cells == ["value", "name"]:
                continue
            if len(cells) != 2 or not re.fullmatch(r"-?\d+", cells[0]):
                raise DocParseError(f"{where}: enum row must be '| value | name |', got {cells}")
            current.values.append((int(cells[0]), cells[1]))
        else:
            if stripped.startswith("|"):
                if _SEPARATOR.match(stripped):
                    continue
                cells = _cells(stripped)
                if cells == ["#", "name", "type", "label"]:
                    continue
                if len(cells) != 4 or not cells[0].isdigit():
                    raise DocParseError(f"{where}: field row must be '| # | name | type | label |': {cells}")
                current.fields.append(FieldRow(int(cells[0]), cells[1], cells[2], cells[3]))
            elif stripped.startswith("No fields"):
                current.empty = True
            elif stripped.startswith("Reserved numbers:") or stripped.lower().startswith("reserved names:"):
                for part in stripped.split(";"):
                    key, _, value = part.strip().partition(":")
                    if key.lower() == "reserved numbers":
                        current.reserved_numbers |= _parse_numbers(value, where)
                    elif key.lower() == "reserved names":
                        current.reserved_names |= set(_BACKTICKED.findall(value))
                    else:
                        raise DocParseError(f"{where}: cannot read reserved clause {part!r}")
            elif stripped.startswith("Nested:"):
                current.nested |= set(_BACKTICKED.findall(stripped))
            else:
                current = None
    for msg in doc.messages.values():
        if msg.empty and msg.fields:
            raise DocParseError(f"message {msg.name} is both empty and has fields")
        if not msg.empty and not msg.fields:
            raise DocParseError(f"message {msg.name} (line {msg.line}) has no field table and no 'No fields'")
    for enum in doc.enums.values():
        if not enum.values:
            raise DocParseError(f"enum {enum.name} (line {enum.line}) has no value rows")
    for svc in doc.services.values():
        if not svc.methods:
            raise DocParseError(f"service {svc.name} (line {svc.line}) has no method rows")
    return doc


def wire_doc_path() -> Path:
    return Path(os.environ.get("FLEXLB_WIRE_DOC") or FACTS)


def doc_to_json(doc: WireDoc) -> str:
    """The parsed tables as JSON (sets as sorted lists)."""
    def plain(obj: Any) -> Any:
        if isinstance(obj, set):
            return sorted(obj)
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [plain(v) for v in obj]
        return obj
    return json.dumps(plain(dataclasses.asdict(doc)), indent=1, sort_keys=True) + "\n"


def doc_from_json(text: str) -> WireDoc:
    """The inverse of doc_to_json."""
    raw = json.loads(text)
    doc = WireDoc()
    for name, m in raw["messages"].items():
        doc.messages[name] = MessageTable(m["name"], m["file"], m["line"], [FieldRow(**f) for f in m["fields"]],
                                          m["empty"], set(m["reserved_numbers"]), set(m["reserved_names"]),
                                          set(m["nested"]))
    for name, e in raw["enums"].items():
        doc.enums[name] = EnumTable(e["name"], e["file"], e["line"], [(v, n) for v, n in e["values"]])
    for name, sv in raw["services"].items():
        doc.services[name] = ServiceTable(sv["name"], sv["file"], sv["line"], [MethodRow(**r) for r in sv["methods"]])
    return doc


_DOC_CACHE: dict[Path, WireDoc] = {}


def load_doc() -> WireDoc:
    path = wire_doc_path()
    if not path.is_file():
        pytest.fail(f"wire reference {path} not found; it is the source of truth for this test", pytrace=False)
    if path not in _DOC_CACHE:
        text = path.read_text(encoding="utf-8")
        _DOC_CACHE[path] = doc_from_json(text) if path.suffix == ".json" else parse_wire_doc(text)
    return _DOC_CACHE[path]


def _doc_names(kind: str) -> list[str]:
    """Names for parametrization at collection time; a missing doc yields one failing case."""
    path = wire_doc_path()
    if not path.is_file():
        return ["<wire doc missing>"]
    try:
        doc = load_doc()
    except DocParseError as exc:
        return [f"<wire doc unparseable: {exc}>"]
    return sorted(getattr(doc, kind))


# ---------------------------------------------------------------------------------------------- descriptors

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def type_text(f: FieldDescriptor) -> str:
    """The document's spelling of a field's type."""
    if _is_map(f):
        entry = f.message_type
        return f"map<{type_text(entry.fields_by_name['key'])}, {type_text(entry.fields_by_name['value'])}>"
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return f.message_type.full_name
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f"enum {f.enum_type.full_name}"
    return _SCALARS.get(f.type, f"<unknown type {f.type}>")


def label_text(f: FieldDescriptor) -> str:
    """The document's spelling of a field's label (backticks dropped)."""
    if _is_map(f):
        return "map"
    if f.is_repeated:
        return "repeated"
    if f.containing_oneof is not None:
        return f"oneof {f.containing_oneof.name}"
    return "singular"


def _norm_label(text: str) -> str:
    return " ".join(text.replace("`", "").split())


def find_message(dotted: str) -> Descriptor | None:
    head, *rest = dotted.split(".")
    for fd in FILES.values():
        d = fd.message_types_by_name.get(head)
        for part in rest:
            d = d.nested_types_by_name.get(part) if d is not None else None
        if d is not None:
            return d
    return None


def find_enum(dotted: str) -> EnumDescriptor | None:
    *outer, last = dotted.split(".")
    if not outer:
        for fd in FILES.values():
            if last in fd.enum_types_by_name:
                return fd.enum_types_by_name[last]
        return None
    parent = find_message(".".join(outer))
    return parent.enum_types_by_name.get(last) if parent is not None else None


def _all_types(fd: FileDescriptor) -> tuple[set[str], set[str]]:
    """Full names of every (non map-entry) message and every enum declared in a file."""
    messages: set[str] = set()
    enums: set[str] = {e.full_name for e in fd.enum_types_by_name.values()}

    def walk(d: Descriptor) -> None:
        if d.GetOptions().map_entry:
            return
        messages.add(d.full_name)
        enums.update(e.full_name for e in d.enum_types)
        for n in d.nested_types:
            walk(n)

    for d in fd.message_types_by_name.values():
        walk(d)
    return messages, enums


# ---------------------------------------------------------------------------------------------- tests


def test_doc_parsed_sensibly() -> None:
    doc = load_doc()
    assert len(doc.messages) + len(doc.enums) >= 90, (len(doc.messages), len(doc.enums))
    assert len(doc.messages) >= 70
    assert len(doc.enums) >= 15
    assert set(doc.services) == {"RpcService", "MultimodalRpcService", "EmbeddingRpcService", "FlexlbService"}
    assert sum(len(s.methods) for s in doc.services.values()) >= 30
    # spot checks that the parser read cells, not just headings
    gen = {r.number: r for r in doc.messages["GenerateConfigPB"].fields}
    assert gen[73] == FieldRow(73, "thinking_mode", "enum GenerateConfigPB.ThinkingModePB", "singular")
    assert doc.messages["GenerateConfigPB"].reserved_numbers == {42, 55, 74}
    assert doc.messages["EmptyPB"].empty
    assert doc.messages["P2PConnectorStartLoadResponsePB"].reserved_numbers == set(range(1, 9))
    assert (0, "ROLE_TYPE_PDFUSION") in doc.enums["RoleTypePB"].values
    assert any(r.label.startswith("oneof") for m in doc.messages.values() for r in m.fields)
    assert any(r.type.startswith("map<") for m in doc.messages.values() for r in m.fields)


def test_parser_rejects_malformed_rows() -> None:
    bad = (
        "#### `X`  (model_rpc_service.proto)\n\n"
        "| # | name | type | label |\n|---|---|---|---|\n| one | a | int32 |\n"
    )
    with pytest.raises(DocParseError):
        parse_wire_doc(bad)
    with pytest.raises(DocParseError):
        parse_wire_doc("#### `Y`  (model_rpc_service.proto)\n\nSomething else.\n")


def test_missing_doc_fails_not_skips(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLEXLB_WIRE_DOC", str(tmp_path / "absent.md"))
    with pytest.raises(pytest.fail.Exception, match="not found"):
        load_doc()


def test_packages_are_empty() -> None:
    for name, fd in FILES.items():
        assert fd.package == "", f"{name} declares package {fd.package!r}; method paths would change"


@pytest.mark.parametrize("name", _doc_names("messages"))
def test_message(name: str) -> None:
    doc = load_doc()
    table = doc.messages[name]
    desc = find_message(name)
    assert desc is not None, f"message {name} (doc line {table.line}) is missing from the descriptors"
    assert desc.full_name == name
    assert desc.file.name == table.file, f"{name} is declared in {desc.file.name}, doc says {table.file}"

    doc_fields = {r.number: r for r in table.fields}
    assert len(doc_fields) == len(table.fields), f"doc lists a field number twice in {name}"
    got = desc.fields_by_number
    assert set(got) == set(doc_fields), (
        f"{name}: field numbers differ; missing {sorted(set(doc_fields) - set(got))}, "
        f"extra {sorted(set(got) - set(doc_fields))}"
    )
    problems = []
    for number, row in sorted(doc_fields.items()):
        f = got[number]
        actual = (f.name, type_text(f), _norm_label(label_text(f)))
        expected = (row.name, row.type, _norm_label(row.label))
        if actual != expected:
            problems.append(f"#{number}: expected {expected}, got {actual}")
    assert not problems, f"{name}:\n" + "\n".join(problems)

    proto = descriptor_pb2.DescriptorProto()
    desc.CopyToProto(proto)
    reserved = {n for r in proto.reserved_range for n in range(r.start, r.end)}
    assert reserved == table.reserved_numbers, f"{name}: reserved numbers {sorted(reserved)}"
    names = set(proto.reserved_name)
    assert names == table.reserved_names, f"{name}: reserved names {sorted(names)}"

    nested = {n.full_name for n in desc.nested_types if not n.GetOptions().map_entry}
    nested |= {e.full_name for e in desc.enum_types}
    assert nested == table.nested, f"{name}: nested types {sorted(nested)}"


@pytest.mark.parametrize("name", _doc_names("enums"))
def test_enum(name: str) -> None:
    doc = load_doc()
    table = doc.enums[name]
    desc = find_enum(name)
    assert desc is not None, f"enum {name} (doc line {table.line}) is missing from the descriptors"
    assert desc.full_name == name
    assert desc.file.name == table.file, f"{name} is declared in {desc.file.name}, doc says {table.file}"
    assert [(v.number, v.name) for v in desc.values] == table.values


def test_no_undocumented_types() -> None:
    doc = load_doc()
    for file_name, fd in FILES.items():
        messages, enums = _all_types(fd)
        documented_m = {n for n, t in doc.messages.items() if t.file == file_name}
        documented_e = {n for n, t in doc.enums.items() if t.file == file_name}
        assert messages == documented_m, (
            f"{file_name}: undocumented {sorted(messages - documented_m)}, "
            f"absent {sorted(documented_m - messages)}"
        )
        assert enums == documented_e, (
            f"{file_name}: undocumented {sorted(enums - documented_e)}, absent {sorted(documented_e - enums)}"
        )


_KIND = {
    (False, False): "unary",
    (False, True): "server-streaming",
    (True, False): "client-streaming",
    (True, True): "bidi-streaming",
}
_CHANNEL_KIND = {
    "unary_unary": "unary",
    "unary_stream": "server-streaming",
    "stream_unary": "client-streaming",
    "stream_stream": "bidi-streaming",
}


class RecordingChannel:
    """Stands in for grpc.Channel: records which multicallable each stub attribute asked for."""

    def __init__(self) -> None:
        self.calls: dict[str, tuple[str, Callable[..., Any]]] = {}

    def __getattr__(self, kind: str) -> Callable[..., str]:
        if kind not in _CHANNEL_KIND:
            raise AttributeError(kind)

        def make(path: str, request_serializer: Any = None, response_deserializer: Any = None,
                 **_: Any) -> str:
            self.calls[path] = (_CHANNEL_KIND[kind], response_deserializer)
            return path

        return make


class RecordingServer:
    """Stands in for grpc.Server: records the handlers the generated add_*_to_server registers."""

    def __init__(self) -> None:
        self.generic: list[Any] = []
        self.registered: dict[str, dict[str, Any]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.registered[service] = handlers


def _message_class_name(fn: Any) -> str:
    """Full proto name of the message class a generated FromString belongs to."""
    return fn.__self__.DESCRIPTOR.full_name


@pytest.mark.parametrize("name", _doc_names("services"))
def test_service(name: str) -> None:
    doc = load_doc()
    table = doc.services[name]
    fd = FILES[table.file]
    assert fd.package == ""
    assert name in fd.services_by_name, f"service {name} not declared in {table.file}"
    svc = fd.services_by_name[name]
    assert svc.full_name == name
    doc_methods = {m.name: m for m in table.methods}
    assert set(svc.methods_by_name) == set(doc_methods), f"{name}: methods differ"

    grpc_mod = GRPC_MODULES[table.file]
    channel = RecordingChannel()
    getattr(grpc_mod, f"{name}Stub")(channel)
    server = RecordingServer()
    getattr(grpc_mod, f"add_{name}Servicer_to_server")(getattr(grpc_mod, f"{name}Servicer")(), server)
    handlers = server.registered[name]

    for mname, row in doc_methods.items():
        m = svc.methods_by_name[mname]
        path = f"/{svc.full_name}/{m.name}"
        assert path == row.path, f"{name}.{mname}: descriptor path {path}, doc {row.path}"
        assert m.input_type.full_name == row.request, f"{name}.{mname}: request {m.input_type.full_name}"
        assert m.output_type.full_name == row.response, f"{name}.{mname}: response {m.output_type.full_name}"
        kind = _KIND[(m.client_streaming, m.server_streaming)]
        assert kind == row.kind, f"{name}.{mname}: kind {kind}, doc {row.kind}"

        # the generated client stub dials exactly the documented path, with the documented kind
        assert row.path in channel.calls, f"stub for {name} never dials {row.path}"
        stub_kind, deserializer = channel.calls[row.path]
        assert stub_kind == row.kind
        assert _message_class_name(deserializer) == row.response

        # the generated server helper registers the method under the same service name and kind
        h = handlers[mname]
        assert _KIND[(h.request_streaming, h.response_streaming)] == row.kind
        assert _message_class_name(h.request_deserializer) == row.request
    assert set(channel.calls) == {m.path for m in table.methods}


def test_services_documented_in_their_files() -> None:
    doc = load_doc()
    for file_name, fd in FILES.items():
        documented = {n for n, s in doc.services.items() if s.file == file_name}
        assert set(fd.services_by_name) == documented, file_name


if __name__ == "__main__":  # python tests/test_wire_compat.py DOC: rewrite the shipped facts from the document
    FACTS.write_text(doc_to_json(parse_wire_doc(Path(sys.argv[1]).read_text(encoding="utf-8"))), encoding="utf-8")
