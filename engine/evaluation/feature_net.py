"""A user's feature network, loaded so that a file from elsewhere cannot run code.

`torch.export.load` and `torch.jit.load` run what a file says: pickled weights, constants and
example inputs, compiled libraries (AOTInductor), TorchScript code, and — with no pickle at all —
the symbolic shape expressions of a program, which it parses with `sympy.sympify` (Python's
`eval`), and graph targets it resolves to any callable reachable from `torch`. So by default a
`.pt2` is read only after this module has checked every part of it against what a plain
exported network needs:

* entries: the program, its weight and constant tables, raw tensor files and the example inputs —
  nothing else (no compiled code, no legacy pickled weight files, no extra programs);
* weights and constants: raw tensors only (no pickled payload, no script or opaque objects);
* example inputs: what `torch.load(weights_only=True)` reads (plain tensors and containers);
* the program: every operator a `torch.ops.aten` / `prims` overload (none that reads or writes
  files) or a symbolic-size operator, no subgraphs or objects as arguments, every name plain (FX
  prints names, and a dict input's keys, into the Python code it generates and runs), every shape
  expression made only of numbers, sizes and sympy's own constructors.

The program is then handed to torch rebuilt from the checked bytes (never read from disk a second
time) with the node metadata (source stack traces, module paths) left out. A TorchScript file is
code by definition and is never loaded by default. With ``trusted`` (the user has said, naming the
file, that it is theirs) both load as torch loads them.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine.errors import InputError

MODEL = "model"  # the one program torch.export.save writes
FIXED_ENTRIES = {"archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id",
                 f"models/{MODEL}.json", f"data/sample_inputs/{MODEL}.pt",
                 f"data/weights/{MODEL}_weights_config.json", f"data/constants/{MODEL}_constants_config.json"}
PLAIN = re.compile(r"^[A-Za-z0-9_.+\-]*$")  # names, dotted paths, dtypes, versions
DUNDER = re.compile(r"(^|\.)__\w*__(\.|$)")  # a path through __class__, __dict__...: Python's own attributes
OP_TARGET = re.compile(r"^torch\.ops\.(aten|prims)\.[A-Za-z0-9_]+\.[A-Za-z0-9_]+$")
# The tensor operators that reach files: aten::save writes one, aten::from_file maps one (writably, if shared).
FILE_OPS = {"save", "from_file"}
# What the serializer writes for the symbolic-size operators (sizes that vary with the batch).
SYM_TARGETS = {f"_operator.{n}" for n in ("eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub",
                                            "floordiv", "mod", "pow", "truediv", "and_", "or_", "lshift", "rshift",
                                            "getitem")} \
    | {"math.trunc"} | {f"torch.sym_{n}" for n in ("not", "int", "float", "ite", "max", "min", "sqrt")}
REFUSED_ARGUMENTS = ("graph", "custom_obj", "operator", "opaque")  # subgraphs and objects carry code or get_attr
TREESPEC_TYPES = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
EXPR_OPS = {"(", ")", ",", "=", "+", "-", "*", "/", "//", "**", "%", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"}
EXPR_CONSTANTS = {"True", "False", "oo", "zoo", "nan"}
MAX_EXPR = 4096
MAX_INFLATION = 64  # an archive may unpack to this many times its size (torch stores tensors uncompressed)


class NeedsTrust(InputError):
    """The file could run code when loaded: only the user, naming the file, may say to load it."""


def check_feature_net(path: Path, trusted: bool = False) -> bytes:
    """The file's bytes, once it is known to run no code of its own (or the user trusts it).

    Cheap next to an evaluation: run before any work, so a refusal costs nothing and writes nothing."""
    if not trusted and path.suffix != ".pt2":
        raise NeedsTrust(path, "is TorchScript or another format that runs code of its own when loaded; trust the "
                               "file explicitly only if its source is yours, or export the network with torch.export "
                               "(.pt2)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror or exc})") from None
    return data if trusted else check_program(path, data)


def load_feature_net(path: Path, device: str, trusted: bool = False) -> Any:
    """A feature network from a `.pt2` (torch.export) or TorchScript file, ready to call on `device`.

    Untrusted: a `.pt2` only after `check_program` proved it runs no code of its own; TorchScript never."""
    data = check_feature_net(path, trusted)
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    # torch.export.load logs a bad file's traceback before it raises; the error below says it in one line.
    export_log.setLevel(logging.ERROR)
    try:
        if path.suffix == ".pt2":
            return torch.export.load(io.BytesIO(data)).module().to(device)
        return torch.jit.load(io.BytesIO(data), map_location=device).eval()
    except Exception as exc:  # both loaders raise RuntimeError, ValueError, OSError... for a bad file
        raise InputError(path, f"is not an exported (.pt2) or TorchScript feature network ({_reason(exc)})") \
            from None
    finally:
        export_log.setLevel(level)


def _reason(exc: BaseException) -> str:
    """The first cause's type and first line: torch's outer errors only point at the log."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    line = next(iter(str(exc).splitlines()), "")
    if "warnings above" in line:  # torch.export.load's last resort, whose cause it only logs
        line = "torch could not rebuild its program (an operator or part this torch does not know)"
    return f"{type(exc).__name__}: {line[:160]}" if line else type(exc).__name__


def check_program(path: Path, data: bytes) -> bytes:
    """The archive rebuilt from its checked parts, or an InputError saying which part could run code."""
    def refuse(why: str) -> InputError:
        return NeedsTrust(path, f"{why}, which could run code when loaded; trust the file explicitly only if its "
                                "source is yours, or export the network again with torch.export.save")

    root, entries = _read_archive(path, data)
    if entries.get("archive_format", b"").strip() != b"pt2" or f"models/{MODEL}.json" not in entries:
        raise InputError(path, "is not an exported (.pt2) feature network (not a torch.export archive)")
    try:
        weights = _payload_table(entries, f"data/weights/{MODEL}_weights_config.json", "weight_")
        constants = _payload_table(entries, f"data/constants/{MODEL}_constants_config.json", "tensor_")
        program = json.loads(entries[f"models/{MODEL}.json"])
    except _Unsafe as exc:
        raise refuse(str(exc)) from None
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError):
        raise InputError(path, "is a damaged torch.export archive (its tables cannot be read)") from None
    allowed = FIXED_ENTRIES | {f"data/weights/{n}" for n in weights} | {f"data/constants/{n}" for n in constants}
    extra = sorted(set(entries) - allowed)
    if extra:
        raise refuse(f"holds {extra[0]!r}, which is not part of a plain exported network")
    try:
        torch.load(io.BytesIO(entries.get(f"data/sample_inputs/{MODEL}.pt", b"")), weights_only=True)
    except Exception:  # the weights-only reader refuses anything that would need code to rebuild
        raise refuse("has example inputs that are not plain tensors") from None
    try:
        _check_json(program, "")
    except _Unsafe as exc:
        raise refuse(str(exc)) from None
    except RecursionError:
        raise refuse("nests its program deeper than any exported network") from None
    entries[f"models/{MODEL}.json"] = json.dumps(program).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for name, content in entries.items():
            z.writestr(root + name, content)
    return out.getvalue()


def _read_archive(path: Path, data: bytes) -> tuple[str, dict[str, bytes]]:
    """The archive's folder name and its entries by name within it."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise InputError(path, "is not an exported (.pt2) feature network (not a torch.export archive)") from None
    if sum(i.file_size for i in infos) > MAX_INFLATION * max(len(data), 1 << 20):
        raise InputError(path, "unpacks to far more than its size; it is not a torch.export archive")
    roots = {i.filename.split("/", 1)[0] for i in infos}
    if len(roots) != 1 or any("/" not in i.filename for i in infos):
        raise InputError(path, "is not an exported (.pt2) feature network (not a torch.export archive)")
    root = roots.pop() + "/"
    try:
        entries = {i.filename[len(root):]: zf.read(i) for i in infos}
    except (zipfile.BadZipFile, OSError, ValueError, RuntimeError) as exc:
        raise InputError(path, f"is a damaged archive ({exc})") from None
    return root, entries


class _Unsafe(Exception):
    """A part of the program that could run code."""


def _payload_table(entries: dict[str, bytes], name: str, prefix: str) -> set[str]:
    """The raw tensor files a weight or constant table names; anything pickled or not a tensor is refused."""
    if name not in entries:
        raise _Unsafe(f"has no {name.rsplit('/', 1)[-1]} (an older format that pickles its weights)")
    table = json.loads(entries[name])["config"]
    files = set()
    for fqn, meta in table.items():
        file = meta["path_name"]
        if meta.get("use_pickle") is not False or not isinstance(file, str) or not file.startswith(prefix):
            raise _Unsafe(f"has a pickled or non-tensor part ({fqn!r})")
        if not PLAIN.match(file) or not PLAIN.match(fqn) or DUNDER.search(fqn):
            raise _Unsafe(f"names a part {fqn!r} in a way torch would interpret")
        files.add(file)
    return files


def _check_json(node: Any, key: str) -> None:
    """Every part of the program is plain: see the module docstring. Node metadata is dropped, not checked."""
    if isinstance(node, dict):
        if "metadata" in node and "target" in node:
            node["metadata"] = {}  # stack traces and module paths: text torch keeps and may print into code
        for k, v in node.items():
            _check_item(k, v)
    elif isinstance(node, list):
        for v in node:
            _check_json(v, key)
    elif isinstance(node, str):
        if not PLAIN.match(node) or DUNDER.search(node):
            raise _Unsafe(f"has a {key or 'value'} {node[:80]!r} that is not a plain name")
    elif node is not None and not isinstance(node, (bool, int, float)):
        raise _Unsafe(f"has an unexpected {type(node).__name__}")


def _check_item(k: Any, v: Any) -> None:
    if not isinstance(k, str) or not PLAIN.match(k):
        raise _Unsafe(f"has a key {k!r} that is not a plain name")
    if k.startswith("as_") and any(word in k for word in REFUSED_ARGUMENTS):
        raise _Unsafe(f"passes a {k[3:].replace('_', ' ')} as an argument")
    if k == "target":
        if not isinstance(v, str) or not (OP_TARGET.match(v) or v in SYM_TARGETS):
            raise _Unsafe(f"calls {str(v)[:80]!r}, which is not a tensor operator")
        if OP_TARGET.match(v) and v.split(".")[3] in FILE_OPS:
            raise _Unsafe(f"calls {v!r}, which reads or writes files")
    elif k == "expr_str":
        _check_expr(v)
    elif k in ("in_spec", "out_spec"):
        _check_treespec(v)
    else:
        _check_json(v, k)


def _sympy_classes() -> set[str]:
    import sympy
    import torch.utils._sympy.functions as torch_sympy

    return {n for mod in (sympy, torch_sympy) for n in dir(mod)
            if not n.startswith("_") and isinstance(getattr(mod, n), type) and issubclass(getattr(mod, n), sympy.Basic)}


def _check_expr(expr: Any) -> None:
    """A shape expression as sympy will `eval` it: numbers, size symbols and sympy's constructors only —
    no attribute, subscript, builtin or string beyond a symbol's name."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR:
        raise _Unsafe("has a shape expression that is not a short text")
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(expr).readline)
                  if t.type not in (tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        raise _Unsafe(f"has a shape expression {expr[:80]!r} that is not an expression") from None
    classes = None
    for i, t in enumerate(tokens):
        after = tokens[i + 1].string if i + 1 < len(tokens) else ""
        if t.type == tokenize.NUMBER or (t.type == tokenize.OP and t.string in EXPR_OPS):
            continue
        if t.type == tokenize.STRING and re.fullmatch(r"(['\"])[A-Za-z][A-Za-z0-9_]*\1", t.string):
            continue
        if t.type == tokenize.NAME:
            if after == "(":
                classes = classes if classes is not None else _sympy_classes()
                if t.string in classes:
                    continue
            elif after == "=":
                if re.fullmatch(r"[a-z]+", t.string):
                    continue
            elif t.string in EXPR_CONSTANTS or re.fullmatch(r"[a-z]+[0-9]+", t.string):
                continue
        raise _Unsafe(f"has a shape expression {expr[:80]!r} that is not plain arithmetic")


def _check_treespec(spec: Any) -> None:
    """The input and output structure: tuples, lists and dicts of tensors, nothing torch must import, and
    plain key names (FX prints a dict's keys into the code it generates for the network's inputs)."""
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "type" in node and node["type"] not in TREESPEC_TYPES:
                raise _Unsafe(f"has inputs or outputs of type {str(node['type'])[:80]!r}")
            for k, v in node.items():
                walk(_context(v) if k == "context" and isinstance(v, str) else v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, str) and (not PLAIN.match(node) or DUNDER.search(node)):
            raise _Unsafe(f"has an input or output named {node[:80]!r}, which is not a plain name")

    def _context(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    try:
        walk(json.loads(spec))
    except (TypeError, ValueError):
        raise _Unsafe("has an unreadable input or output structure") from None
