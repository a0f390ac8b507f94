"""A feature network from elsewhere never runs code unless the user trusts that file.

Each hostile file is built here from a real torch.export / TorchScript network: a pickled weight
whose unpickling writes a marker file, a program whose shape expression does the same through
sympy's eval (no pickle at all), an operator that is not a tensor operator, compiled code. Each is
first shown to run its payload under plain `torch.export.load` where that is what it attacks, so
the refusal is of something real.
"""

import json
import logging
import pickle
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from engine.data.phantoms import make_phantoms
from engine.errors import InputError
from engine.evaluation.evaluate import EvalSettings, EvaluateJob
from engine.evaluation.feature_net import NeedsTrust, load_feature_net
from engine.io.medsynth_writer import SampleWriter, write_image_set
from medsynth.cli import build_parser, main


def write_marker(path: str) -> None:
    """The payload: what a crafted file makes the loading process do. Harmless, and easy to see."""
    Path(path).write_text("ran")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return write_marker, (self.marker,)


class Encoder(torch.nn.Module):
    """A small user network: images (N, 1, H, W) -> 4 features, any batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.norm = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))


SYMBOL = b"Symbol('s77', positive=True, integer=True)"


def exported(path: Path) -> tuple[Path, Encoder]:
    torch.manual_seed(0)
    net = Encoder().eval()
    program = torch.export.export(net, (torch.zeros(8, 1, 16, 16),), dynamic_shapes={"x": {0: torch.export.Dim("b")}})
    torch.export.save(program, str(path))
    return path, net


def rewritten(good: Path, out: Path, change) -> Path:
    """A copy of the archive with `change(name, bytes) -> bytes | None` applied to each entry (None: left out)."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = change(info.filename.split("/", 1)[1], src.read(info))
            if data is not None:
                dst.writestr(info, data)
    return out


def pickled_weight(good: Path, out: Path, marker: Path) -> Path:
    def change(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            table = json.loads(data)
            table["config"]["conv.bias"]["use_pickle"] = True
            return json.dumps(table).encode()
        if name == "data/weights/" + json_table(good)["conv.bias"]["path_name"]:
            return pickle.dumps(Payload(marker))
        return data
    return rewritten(good, out, change)


def json_table(pt2: Path) -> dict:
    with zipfile.ZipFile(pt2) as z:
        name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        return json.loads(z.read(name))["config"]


def evaluation_files(root: Path) -> tuple[Path, Path]:
    real = write_image_set(root / "real.h5", make_phantoms(24, size=16, seed=700))
    synth = make_phantoms(8, size=16, seed=900)
    synth_path = root / "synth.h5"
    with SampleWriter(synth_path, 8, synth.images.shape[1:], masks=True, labels=False,
                      normalisation={"modality": "MR", "lo": 0.0, "hi": 1000.0}, config={}) as w:
        w.append(synth.images, np.arange(8), synth.masks)
    return synth_path, real


def tree(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A plain exported network, made once: the tests only read it (each hostile copy is a new file)."""
    return exported(tmp_path_factory.mktemp("net") / "encoder.pt2")


def test_a_pickled_weight_runs_its_payload_under_torch_but_not_here(tmp_path, good, capsys):
    marker = tmp_path / "pwned"
    evil = pickled_weight(good[0], tmp_path / "evil.pt2", marker)
    with pytest.raises(RuntimeError):
        torch.export.load(str(evil))  # what evaluate did before: the payload runs first, then torch fails
    assert marker.exists()
    marker.unlink()

    synth, real = evaluation_files(tmp_path)
    before = tree(tmp_path)
    with h5py.File(synth, "r") as f:
        metrics = dict(f["metrics"].attrs)
    rc = main(["evaluate", str(synth), "--real", str(real), "--features-net", str(evil), "--no-utility"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "evil.pt2" in err[0] and "pickled" in err[0] and "Traceback" not in err[0]
    assert not marker.exists()
    assert tree(tmp_path) == before  # nothing written: no /metrics, no report
    with h5py.File(synth, "r") as f:
        assert len(f["metrics"]) == 0 and dict(f["metrics"].attrs) == metrics


def test_a_shape_expression_runs_code_without_any_pickle_and_is_refused(tmp_path, good):
    marker = tmp_path / "pwned"
    payload = f"(__import__('pathlib').Path({str(marker)!r}).write_text('ran') and 0) or ".encode() + SYMBOL
    evil = rewritten(good[0], tmp_path / "sympy.pt2",
                     lambda name, data: data.replace(SYMBOL, payload) if name == "models/model.json" else data)
    torch.export.load(str(evil))  # torch parses the expression with sympy, i.e. eval: the payload runs
    assert marker.exists()
    marker.unlink()
    with pytest.raises(NeedsTrust, match=r"sympy\.pt2: has a shape expression .* not plain arithmetic"):
        load_feature_net(evil, "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("change, fault", [
    # An operator that is any callable reachable from torch (torch.os.system, torch.load, ...), not a tensor op.
    (lambda n, d: d.replace(b'"torch.ops.aten.relu.default"', b'"torch.os.system"') if n.endswith(".json") else d,
     "calls 'torch.os.system', which is not a tensor operator"),
    # A tensor operator that writes a file.
    (lambda n, d: d.replace(b'"torch.ops.aten.relu.default"', b'"torch.ops.aten.save.default"')
     if n.endswith(".json") else d, "calls 'torch.ops.aten.save.default', which reads or writes files"),
    # A node name FX would print into generated code.
    (lambda n, d: d.replace(b'"relu"', b'"x\\")\\nimport os"') if n.endswith("model.json") else d,
     "not a plain name"),
    # A keyword-input name FX would print, quoted, into the code it generates for the inputs.
    (lambda n, d: d.replace(b'\\"context\\": \\"[]\\"', b'\\"context\\": \\"[\\\\\\"x\'+1\\\\\\"]\\"')
     if n.endswith("model.json") else d, "has an input or output named \"x'+1\""),
    # Compiled code (AOTInductor) is a shared library torch would load.
    (lambda n, d: d, "data/aotinductor/model/model.so"),
    # Example inputs that need code to rebuild.
    (lambda n, d: pickle.dumps(Payload(Path("/nonexistent/never"))) if n.endswith("sample_inputs/model.pt") else d,
     "example inputs that are not plain tensors"),
    # A constant that is an opaque pickled object.
    (lambda n, d: json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                               "tensor_meta": None}}}).encode()
     if n.endswith("constants_config.json") else d, "pickled or non-tensor part ('c')"),
])
def test_every_part_that_could_run_code_is_refused(tmp_path, good, change, fault):
    evil = rewritten(good[0], tmp_path / "evil.pt2", change)
    if "aotinductor" in fault:
        with zipfile.ZipFile(evil, "a") as z:
            z.writestr("encoder/data/aotinductor/model/model.so", b"\x7fELF")
    with pytest.raises(NeedsTrust) as err:
        load_feature_net(evil, "cpu")
    assert fault in str(err.value) and str(err.value).startswith(str(evil))
    assert "\n" not in str(err.value)


def test_a_plain_exported_network_loads_without_trust_and_computes_the_same(good):
    path, net = good
    loaded = load_feature_net(path, "cpu")
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-6)


def test_torchscript_needs_trust_and_loads_with_it(tmp_path, capsys):
    torch.manual_seed(0)
    net = Encoder().eval()
    path = tmp_path / "encoder.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    synth, real = evaluation_files(tmp_path)
    rc = main(["evaluate", str(synth), "--real", str(real), "--features-net", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "encoder.ts: is TorchScript or another format" in err[0]
    with pytest.raises(NeedsTrust):
        EvaluateJob(synth, real=real, settings=EvalSettings(features_net=str(path)))
    EvaluateJob(synth, real=real, settings=EvalSettings(features_net=str(path), trust_code=True))
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(load_feature_net(path, "cpu", trusted=True)(x), net(x), atol=1e-6)


def test_trust_code_loads_the_named_file_as_torch_does(tmp_path, good):
    assert build_parser().parse_args(["evaluate", "s.h5", "--features-net", "n.pt2", "--trust-code"]).trust_code
    assert not build_parser().parse_args(["evaluate", "s.h5", "--features-net", "n.pt2"]).trust_code
    marker = tmp_path / "pwned"
    evil = pickled_weight(good[0], tmp_path / "evil.pt2", marker)
    with pytest.raises(InputError):  # trusted: loaded as torch loads it, payload and all
        load_feature_net(evil, "cpu", trusted=True)
    assert marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x05\x06" + bytes(18)])
def test_a_file_that_is_not_an_archive_is_one_line(tmp_path, content):
    path = tmp_path / "net.pt2"
    path.write_bytes(content)
    with pytest.raises(InputError, match=r"net\.pt2: is not an exported \(\.pt2\) feature network"):
        load_feature_net(path, "cpu")


def test_the_readme_and_help_warn(capsys):
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert "--trust-code" in readme
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    helps = " ".join(capsys.readouterr().out.split())
    assert "--trust-code" in helps and "running any code" in helps


def test_nothing_here_unpickles(tmp_path, good, monkeypatch):
    """Without trust the loader never calls a full unpickler: any torch.load must be weights-only."""
    calls = []
    real_load = torch.load

    def watched(*a, **kw):
        calls.append(kw.get("weights_only"))
        return real_load(*a, **kw)

    monkeypatch.setattr(torch, "load", watched)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads called"))
    load_feature_net(good[0], "cpu")
    assert calls and all(w is True for w in calls)


def test_the_app_asks_naming_the_file_before_it_loads_code(tmp_path, qtbot, monkeypatch):
    """In the app the trust is a question naming the file, in words: Cancel loads nothing, a clear yes loads it."""
    from PySide6.QtWidgets import QMessageBox

    from medsynth_gui.panels.evaluate_panel import EvaluatePanel

    monkeypatch.delenv("MEDSYNTH_FID_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    torch.manual_seed(0)
    net = tmp_path / "my encoder.ts"
    torch.jit.save(torch.jit.script(Encoder().eval()), str(net))
    synth, real = evaluation_files(tmp_path)
    panel = EvaluatePanel()
    qtbot.addWidget(panel)
    panel.set_file(str(synth))
    panel.real_edit.setText(str(real))
    panel.net_edit.setText(str(net))
    panel.utility_check.setChecked(False)
    panel.steps.setValue(panel.steps.minimum())  # the label-quality networks: as few steps as the app allows
    asked = []

    def answer(choice: str):
        def exec_(box):
            asked.append((box.text(), [b.text() for b in box.buttons()]))
            box.clickedButton = lambda: next(b for b in box.buttons() if b.text().startswith(choice))
            return 0
        return exec_

    monkeypatch.setattr(QMessageBox, "exec", answer("Cancel"))
    panel.start()
    text, buttons = asked[-1]
    assert "my encoder.ts" in text and str(tmp_path) in text and "runs code" in text
    assert "Trust my encoder.ts and load it" in buttons
    assert not any("--" in t for t in (text, *buttons, panel.error.text()))  # words, never a flag
    assert "my encoder.ts: is TorchScript or another format" in panel.error.text() and not panel.runner.running
    assert panel.status.text() == "Not started"  # the user said no: not a failure
    with h5py.File(synth, "r") as f:
        assert "fd_net" not in f["metrics"].attrs

    monkeypatch.setattr(QMessageBox, "exec", answer("Trust"))
    with qtbot.waitSignal(panel.evaluated, timeout=120_000):
        panel.start()
    assert len(asked) == 2
    with h5py.File(synth, "r") as f:
        assert np.isfinite(f["metrics"].attrs["fd_net"])


def test_a_damaged_program_is_one_line_without_torchs_traceback(tmp_path, good):
    """A plain archive torch cannot rebuild: one line with the cause, not the traceback torch logs."""
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append
    logging.getLogger("torch.export").addHandler(handler)
    try:
        bad = rewritten(good[0], tmp_path / "bad.pt2", lambda n, d: d.replace(b"torch.ops.aten.relu.default",
                        b"torch.ops.aten.nosuchop.default") if n.endswith("model.json") else d)
        with pytest.raises(InputError, match=r"bad\.pt2: is not an exported .*torch could not rebuild its program"):
            load_feature_net(bad, "cpu")
        bad = rewritten(good[0], tmp_path / "short.pt2", lambda n, d: d[:5] if n.endswith("weights/weight_0") else d)
        with pytest.raises(InputError, match=r"short\.pt2: .*\(ValueError: Record data/weights/weight_0: size 5"):
            load_feature_net(bad, "cpu")
    finally:
        logging.getLogger("torch.export").removeHandler(handler)
    assert not [r for r in logged if r.exc_info]
