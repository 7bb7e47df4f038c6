"""A pretrained model loaded from its directory trains with its own tokenizer; what would
train it on other ids is refused before any thread starts."""

import shutil
import threading

import pytest
import torch

import lmwidget
from lmwidget.data import tokens
from lmwidget.training.config import TrainConfig
from lmwidget.data.text import builtin_text
from lmwidget.models.hf import unwrap
from lmwidget.training.run import Run

from tests.conftest import SHARED_SHAKESPEARE

transformers = pytest.importorskip("transformers")

TEXT = (SHARED_SHAKESPEARE.read_text() if SHARED_SHAKESPEARE.is_file() else builtin_text())[:200_000]
VOCAB = 400
OPTIONS = dict(data=TEXT, block_size=32, batch_size=4, eval_interval=0, display=False)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMWIDGET_CACHE_DIR", str(tmp_path / "cache"))


def gpt2(vocab_size=VOCAB, seed=0):
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=32, n_layer=2,
                                     n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(config)


@pytest.fixture(scope="module")
def bpe():
    """A byte-level BPE of VOCAB tokens trained offline on the corpus, as a transformers tokenizer."""
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokens.train_bpe(TEXT, VOCAB).tokenizer)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bpe):
    """A tiny GPT-2 and its tokenizer, as save_pretrained leaves them in a directory."""
    path = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    gpt2().save_pretrained(path)
    bpe.save_pretrained(path)
    return path


@pytest.fixture
def weights_only(saved, tmp_path):
    """The same model's directory without its tokenizer."""
    path = tmp_path / "weights-only"
    path.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(saved / name, path / name)
    return path


def no_thread_started():
    return not [t.name for t in threading.enumerate() if t.name.startswith("lmwidget-run")]


def test_a_model_directory_trains_from_its_weights_with_the_tokenizer_beside_it(saved, bpe):
    run = Run(TrainConfig.from_options(model=str(saved), max_steps=20,
                                       **{k: v for k, v in OPTIONS.items() if k != "display"}))
    assert run.config.model == str(saved) and run.config.tokenizer == str(saved)
    assert run.tokenizer.vocab_size == VOCAB
    assert run.tokenizer.encode(TEXT[:2000]) == bpe.encode(TEXT[:2000])
    start = gpt2().state_dict()  # the weights it was saved with
    assert all(torch.equal(v, start[k]) for k, v in unwrap(run.model).state_dict().items())
    assert unwrap(run.model).config.name_or_path == str(saved)
    assert run.describe()["model"].startswith(f"GPT2LMHeadModel from {saved} (")
    assert run.describe()["tokenizer"] == f"tiny-gpt2 ({VOCAB})"
    run.start()
    assert run.wait(120) and run.state == "finished", run.error
    text = run.sample()
    assert bpe.decode(bpe.encode(text)) == text


def test_a_loaded_pretrained_model_finds_its_tokenizer_in_the_directory_it_came_from(saved):
    model = transformers.AutoModelForCausalLM.from_pretrained(saved)
    run = lmwidget.train(model=model, max_steps=3, **OPTIONS)
    assert run.wait(120) and run.state == "finished", run.error
    assert run.config.tokenizer == str(saved) and run.tokenizer.vocab_size == VOCAB
    assert run.describe()["model"].startswith(f"GPT2LMHeadModel from {saved} (")


def test_a_given_tokenizer_wins_and_a_larger_embedding_table_is_fine(saved, bpe):
    run = lmwidget.train(model=gpt2(vocab_size=VOCAB + 50), tokenizer=bpe, max_steps=3, **OPTIONS)
    assert run.wait(120) and run.state == "finished", run.error
    assert run.tokenizer.vocab_size == VOCAB and run.describe()["model"].startswith("GPT2LMHeadModel (")


@pytest.mark.parametrize("case, message", [
    ("char object", r"model GPT2LMHeadModel from '.*weights-only' is pretrained on its own tokenizer's "
                    r"ids.*the path of its tokenizer\.json \(tokenizer='\.\.\./tokenizer\.json': "
                    r"lmwidget reads it with the tokenizers library, which runs no code\)"),
    ("char directory", r"Pass the tokenizer it was trained with as the path of its tokenizer\.json"),
    ("explicit char", r"character tokenizer.*Leave tokenizer out to use the one beside it, or pass "
                      r"tokenizer='.*tiny-gpt2'"),
    ("fresh bpe", r"with a bpe tokenizer trained here it would read every token as another.*Leave "
                  r"tokenizer out"),
    ("small table", r"embedding table has 300 rows, fewer than the 400 tokens of the tokenizer "
                    r".*model\.resize_token_embeddings\(400\)"),
    ("missing", r"unknown model '.*nowhere'; valid: gpt, lstm, .*directory of a Hugging Face "
                r"causal LM.*No such directory exists"),
    ("a file", r"config\.json' is a file, not a directory: pass the directory of a Hugging Face"),
    ("no config", r"has no config\.json"),
    ("no weights", r"has a config.json but no weights: expected model\.safetensors, "
                   r"model\.safetensors\.index\.json, pytorch_model\.bin or "
                   r"pytorch_model\.bin\.index\.json"),
])
def test_what_would_train_on_other_ids_is_refused_before_any_thread_starts(
        case, message, saved, weights_only, bpe, tmp_path):
    model = {"char object": lambda: transformers.AutoModelForCausalLM.from_pretrained(weights_only),
             "char directory": lambda: weights_only,
             "explicit char": lambda: str(saved),
             "fresh bpe": lambda: str(saved),
             "small table": lambda: gpt2(vocab_size=300),
             "missing": lambda: str(tmp_path / "nowhere"),
             "a file": lambda: str(saved / "config.json"),
             "no config": lambda: (weights_only / "config.json").unlink() or weights_only,
             "no weights": lambda: (weights_only / "model.safetensors").unlink() or weights_only}[case]()
    extra = {"explicit char": dict(tokenizer="char"), "fresh bpe": dict(tokenizer="bpe", vocab_size=300),
             "small table": dict(tokenizer=bpe)}.get(case, {})
    with pytest.raises(ValueError, match=message) as error:
        lmwidget.train(model=model, max_steps=3, **OPTIONS, **extra)
    assert no_thread_started()
    assert "AutoTokenizer" not in str(error.value)  # it would run a hostile directory's code


def test_a_run_of_a_model_directory_resumes_from_the_same_directory_exactly(saved, tmp_path):
    whole = lmwidget.train(model=str(saved), max_steps=20, lr=1e-3, **OPTIONS)
    assert whole.wait(120) and whole.state == "finished", whole.error
    half = lmwidget.train(model=str(saved), max_steps=10, lr=1e-3, checkpoint_dir=str(tmp_path),
                          **OPTIONS)
    assert half.wait(120)
    half.save()
    resumed = lmwidget.train(resume=str(tmp_path), max_steps=20, display=False)
    assert resumed.wait(120) and resumed.state == "finished", resumed.error
    assert resumed.config.model == str(saved) and resumed.tokenizer.same_as(half.tokenizer)
    assert torch.allclose(torch.tensor(resumed.history["loss"].to_numpy()),
                          torch.tensor(whole.history["loss"].to_numpy()), atol=1e-6)


def test_the_command_line_takes_a_model_directory(saved):
    from lmwidget.remote.cli import build_run, parser

    args = vars(parser().parse_args(["--model", str(saved), "--data", TEXT, "--steps", "3",
                                     "--block-size", "32"]))
    run = build_run({k: v for k, v in args.items() if k in TrainConfig.option_names()
                     or k in ("resume", "early_stopping", "reduce_lr")})
    assert run.config.model == str(saved) and run.tokenizer.vocab_size == VOCAB


@pytest.mark.slow
def test_lmtrain_takes_a_model_directory(saved, tmp_path):
    from tests.harness.kernel import Kernel

    kernel = Kernel(tmp_path)
    try:
        _, _, error, _ = kernel.execute(
            "%load_ext lmwidget\n"
            f"r = %lmtrain --model {saved} --steps 3 --block-size 32 --batch-size 4 --eval-interval 0")
        assert error is None, error
        kernel.wait_for("r.state", "finished", timeout=60)
        assert kernel.value("r.tokenizer.vocab_size") == VOCAB
        _, err, _, _ = kernel.execute(f"%lmtrain --model {tmp_path / 'nowhere'}")
        assert "UsageError" in err and "nor an existing directory of a Hugging Face model" in err
    finally:
        kernel.shutdown()


def test_a_model_directory_trains_from_a_token_directory_of_its_own_tokenizer(saved, tmp_path):
    tokens_dir = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "tokens", tokenizer=str(saved), progress=False)
    run = lmwidget.train(model=str(saved), max_steps=5, **{**OPTIONS, "data": str(tokens_dir)})
    assert run.wait(120) and run.state == "finished", run.error
    assert run.dataset.tokenizer.same_as(tokens.load(str(saved)))
    other = lmwidget.prepare(SHARED_SHAKESPEARE, tmp_path / "other", vocab_size=300, progress=False)
    with pytest.raises(ValueError, match="is not the one token directory .* was prepared with"):
        lmwidget.train(model=str(saved), max_steps=5, **{**OPTIONS, "data": str(other)})
    assert no_thread_started()


def test_the_lr_range_test_takes_a_model_directory(saved):
    finder = lmwidget.lr_find(model=str(saved), steps=20, data=TEXT, block_size=32, batch_size=4,
                              display=False)
    assert finder.wait(120) and len(finder.lrs) > 5
