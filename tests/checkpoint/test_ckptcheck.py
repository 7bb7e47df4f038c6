"""What a checkpoint must pass before use: crafted, damaged and incomplete files are refused by
name, with what was wrong, before anything is built from them."""

import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import lmwidget
from lmwidget import CheckpointError
from lmwidget.checkpoint import files as checkpoint

from tests.conftest import TINY, scaled

REPO = Path(__file__).resolve().parents[2]

# a resume in a fresh interpreter: its outcome, its time, and how far its resident memory rose
# above where it stood (VmHWM is reset first); data beyond 1 GiB more is refused by the kernel,
# so a regression fails with an allocator error rather than swamping the machine
MEASURE = r"""
import json, resource, sys, time
import lmwidget

def kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

resource.setrlimit(resource.RLIMIT_DATA, ((kb("VmData") << 10) + (1 << 30),) * 2)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before, t0 = kb("VmRSS"), time.perf_counter()
try:
    lmwidget.train(resume=sys.argv[1], display=False)
    outcome = "resumed"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}"
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - t0,
                  "grown_mb": (kb("VmHWM") - before) / 1024}))
"""

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")


def measure_resume(path) -> dict:
    done = subprocess.run([sys.executable, "-c", MEASURE, str(path)], cwd=REPO, capture_output=True,
                          text=True, timeout=scaled(120))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    run = lmwidget.train(display=False, max_steps=5, **TINY)
    assert run.wait(120)
    return run.save(tmp_path_factory.mktemp("good") / "good.pt")


def crafted(saved: Path, dest: Path, change, digest: bool = True) -> Path:
    """`saved` changed by `change(payload)`, with a digest that matches it (anyone can make one:
    it proves the file unchanged since it was written, not who wrote it)."""
    payload = torch.load(saved, weights_only=True)
    del payload["digest"]
    change(payload)
    if digest:
        payload["digest"] = checkpoint.digest(payload)
    torch.save(payload, dest)
    return dest


@linux_only
def test_options_edited_to_ask_for_a_huge_model_are_refused_before_it_is_built(saved, tmp_path):
    """A 250 kB file whose options say n_embd=8192, n_layer=48 (155 GB of weights) is refused
    on shapes compared on the meta device: in bounded memory, at once."""
    evil = crafted(saved, tmp_path / "huge.pt",
                   lambda p: p["config"].update(n_embd=8192, n_layer=48, max_steps=1000))
    result = measure_resume(evil)
    outcome = result["outcome"]
    assert outcome.startswith(
        f"CheckpointError: the weights in checkpoint {evil} do not fit the model its options describe "
        f"(gpt with n_layer=48, n_head=2, n_embd=8192, block_size=32 and "), outcome
    assert " GB of weights), so it was not built: missing blocks.1.attn.proj.bias, " in outcome
    assert re.search(r"different shapes \(wte\.weight: saved \(\d+, 32\), the options imply \(\d+, 8192\);",
                     outcome)
    assert result["grown_mb"] < 200 and result["seconds"] < scaled(5), result


@linux_only
def test_a_2_gb_file_of_zeros_is_refused_from_its_first_bytes(tmp_path):
    zeros = tmp_path / "zeros.pt"
    with open(zeros, "wb") as f:
        f.truncate(2 << 30)  # sparse: no disk, and nothing of it is read unless asked
    result = measure_resume(zeros)
    assert result["outcome"] == (
        f"CheckpointError: {zeros} is not an lmwidget checkpoint: those are zip archives, as "
        f"torch.save writes, and its 2,147,483,648 bytes start with 00 00 00 00. Nothing in it was read")
    assert result["grown_mb"] < 200 and result["seconds"] < scaled(5), result


class Calls:
    """Pickles as a call of `function(argument)`: what a code-running checkpoint holds."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


@pytest.mark.parametrize("function, name", [(os.system, f"{os.system.__module__}.system"),
                                            (exec, "builtins.exec")])
def test_code_in_a_checkpoint_is_refused_by_the_name_of_what_it_calls(saved, tmp_path, function, name):
    marker = tmp_path / "ran"
    code = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w').close()"
    evil = crafted(saved, tmp_path / "evil.pt",  # no digest: it is refused before one is checked
                   lambda p: p["history"]["events"].append(Calls(function, code)), digest=False)
    with pytest.raises(CheckpointError) as error:
        lmwidget.train(resume=evil, display=False)
    assert str(error.value) == (
        f"checkpoint {evil} was refused: it holds a reference to {name}, a function or class that "
        f"unpickling would import and call. lmwidget loads only tensors and plain values "
        f"(torch.load with weights_only=True), so nothing in it ran and nothing was loaded")
    assert not marker.exists()


def test_a_valid_digest_over_missing_keys_names_what_is_missing(saved, tmp_path):
    def cut(payload):
        del payload["trainer"], payload["history"]["clock"]

    evil = crafted(saved, tmp_path / "part.pt", cut)
    with pytest.raises(CheckpointError) as error:
        lmwidget.train(resume=evil, display=False)
    assert str(error.value) == (
        f"checkpoint {evil} lacks trainer, history['clock']: it is incomplete, or not a checkpoint of "
        f"lmwidget.train (run.save() writes one). Nothing was loaded")
    evil = crafted(saved, tmp_path / "odd.pt", lambda p: p["trainer"].update(rng="x"))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {evil} has trainer['rng'] as a "
                                                        f"str, not a dict: it is incomplete")):
        lmwidget.train(resume=evil, display=False)


def test_weights_sharing_bytes_the_model_keeps_apart_are_refused(saved, tmp_path):
    """Options asking for a second layer, and its weights as views of the first's: every shape
    fits, but the model would hold more than the file does."""
    def second_layer(payload):
        weights = payload["trainer"]["model"]
        weights.update({k.replace("blocks.0.", "blocks.1."): v for k, v in list(weights.items())
                        if k.startswith("blocks.0.")})
        payload["config"]["n_layer"] = 2

    evil = crafted(saved, tmp_path / "shared.pt", second_layer)
    with pytest.raises(CheckpointError, match=re.escape(
            f"the weights in checkpoint {evil} lie on ") + r"[\d,]+ bytes of it, but the model its "
            r"options describe \(gpt with n_layer=2, .*\) needs [\d,]+: weights that are separate"):
        lmwidget.train(resume=evil, display=False)


def test_a_tensor_larger_than_the_bytes_it_lies_on_is_refused(saved, tmp_path):
    def overlapping(payload):
        weight = payload["trainer"]["model"]["wte.weight"]
        payload["trainer"]["model"]["wte.weight"] = torch.zeros(1).expand(weight.shape)  # strides 0

    evil = crafted(saved, tmp_path / "overlap.pt", overlapping)
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint {evil} was refused: checkpoint['trainer']['model']['wte.weight'] has shape (")
            + r"\d+, 32\) \([\d,]+ bytes\) but lies on 4 bytes of the file \(strides \(0, 0\)"):
        lmwidget.train(resume=evil, display=False)


def rewritten(src: Path, dest: Path, compression=zipfile.ZIP_STORED, pickled=None) -> Path:
    """`src` as a zip archive written anew: compressed, or with `pickled` for its data.pkl."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", compression) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, pickled if pickled and info.filename.endswith("/data.pkl") else data)
    return dest


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_a_pickle_instruction_tensors_never_need_is_refused_by_name(saved, tmp_path):
    evil = rewritten(saved, tmp_path / "p4.pt", pickled=pickle.dumps({"step": 1}, protocol=4))
    with pytest.raises(CheckpointError) as error:
        checkpoint.read(evil)
    assert str(error.value) == (
        f"checkpoint {evil} was refused: it holds the pickle instruction FRAME (opcode 149), which "
        f"tensors and plain values never need. lmwidget loads only tensors and plain values "
        f"(torch.load with weights_only=True), so nothing in it ran and nothing was loaded")


def test_a_compressed_record_is_refused(saved, tmp_path):
    evil = rewritten(saved, tmp_path / "packed.pt", zipfile.ZIP_DEFLATED)
    with pytest.raises(CheckpointError, match=re.escape(
            f"checkpoint {evil} was refused: its record archive/data.pkl is compressed, which torch.save "
            f"never does, and it could unpack to any size")):
        checkpoint.read(evil)


def test_records_claiming_more_bytes_than_the_file_are_refused(saved, tmp_path):
    evil = rewritten(saved, tmp_path / "claims.pt")
    data = bytearray(evil.read_bytes())
    entry = data.index(b"PK\x01\x02")  # the first record's entry in the zip directory
    data[entry + 20:entry + 28] = struct.pack("<II", 1 << 31, 1 << 31)  # its sizes
    evil.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {evil} was refused: its records add "
                                                        f"up to ") + r"[\d,]+ bytes, more than the file's"):
        checkpoint.read(evil)


def test_a_pretrained_models_config_is_compared_before_its_weights_are_read(saved, tmp_path):
    """A checkpoint naming a model directory is checked against that directory's config.json
    (on the meta device): its weights, here not even a valid file, are never read."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    small = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=2)
    big = tmp_path / "big-gpt2"
    config = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=2)
    config.save_pretrained(big)
    (big / "model.safetensors").write_bytes(b"not weights")
    vocab = {f"w{i}": i for i in range(64)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))

    def pretrained(payload):
        payload["config"].update(model=str(big), tokenizer="hf")
        payload["vocab"], payload["tokenizer"] = [], {"kind": "hf", "name": "", "json": tokenizer.to_str()}
        payload["trainer"]["model"] = transformers.GPT2LMHeadModel(small).state_dict()

    evil = crafted(saved, tmp_path / "pretrained.pt", pretrained)
    with pytest.raises(CheckpointError) as error:
        lmwidget.train(resume=evil, display=False)
    assert str(error.value).startswith(
        f"the weights in checkpoint {evil} do not fit the model its options describe (GPT2LMHeadModel "
        f"from {big}: ")
    assert ("different shapes (transformer.wte.weight: saved (64, 32), the options imply (64, 64); "
            in str(error.value))
    assert "missing transformer.h.1." in str(error.value)
