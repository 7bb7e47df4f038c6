"""Tiny models and trainers of the frameworks lmwidget steers, built offline: your own loop, a
Hugging Face Trainer (GPT-2 from a small config, a character tokenizer made with `tokenizers`)
and a Lightning module. Also pasted into kernels by the tests that drive them over comms."""

import inspect

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmwidget.data.text import builtin_text

T = 32  # tokens per sequence
TEXT = builtin_text()[:60_000]
CHARS = sorted(set(TEXT))


def char_ids(text=TEXT) -> torch.Tensor:
    stoi = {c: i for i, c in enumerate(CHARS)}
    return torch.tensor([stoi[c] for c in text])


def own_loop(steps: int, run=None, lr_scheduler: bool = False, seed: int = 0, skip: int = 0):
    """A user's own loop over a tiny GPT: returns (model, optimizer, scheduler, train), where
    `train()` runs `steps` steps (calling run.tick(loss) when `run` is given, then or later
    through the returned function's `run` attribute) and returns the losses it computed.
    `skip`: the batches of that many steps are drawn and left out (a resumed loop's data)."""
    from lmwidget.models.builtin import GPT

    torch.manual_seed(seed)
    model = GPT(len(CHARS), T, n_layer=1, n_head=2, n_embd=32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s / 50)) if lr_scheduler else None
    ids = char_ids()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(skip):
        torch.randint(len(ids) - T - 1, (8,), generator=gen)

    def train():
        losses = []
        for _ in range(steps):
            ix = torch.randint(len(ids) - T - 1, (8,), generator=gen)
            x = torch.stack([ids[i:i + T] for i in ix])
            y = torch.stack([ids[i + 1:i + T + 1] for i in ix])
            _, loss = model(x, y)
            loss.backward()
            losses.append(loss.detach())
            if train.run is not None and not train.run.tick(loss):
                break
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        return losses

    train.run = run
    return model, optimizer, scheduler, train


class Blocks(torch.utils.data.Dataset):
    """Consecutive blocks of character ids, as a causal LM's examples."""

    def __init__(self, ids, hf: bool):
        self.ids, self.hf = ids, hf

    def __len__(self):
        return (len(self.ids) - 1) // T

    def __getitem__(self, i):
        x = self.ids[i * T:(i + 1) * T + 1]
        if self.hf:
            return {"input_ids": x[:-1], "labels": x[:-1].clone()}
        return x[:-1], x[1:]


def hf_tokenizer():
    """A character-level fast tokenizer, made with the `tokenizers` library (nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab["<eos>"] = len(vocab)
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", bos_token="<eos>", pad_token="<eos>")


def hf_trainer(output_dir, max_steps: int = 200, seed: int = 0, **args):
    """A Hugging Face Trainer of a tiny GPT-2 on characters, with an eval set and a tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    tok = hf_tokenizer()
    ids = char_ids()
    n = int(len(ids) * 0.9)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=T, n_embd=32, n_layer=1, n_head=2,
                                       resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                       bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.eos_token_id))
    options = dict(output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8,
                   learning_rate=3e-3, lr_scheduler_type="cosine", logging_steps=1000, save_strategy="no",
                   report_to=[], use_cpu=True, dataloader_num_workers=0, seed=seed, disable_tqdm=True)
    options.update(args)
    # transformers 5 names the tokenizer processing_class; 4.40 to 4.45 call it tokenizer
    named = "processing_class" if "processing_class" in inspect.signature(Trainer).parameters else "tokenizer"
    return Trainer(model=model, args=TrainingArguments(**options), train_dataset=Blocks(ids[:n], hf=True),
                   eval_dataset=Blocks(ids[n:n + 10 * T + 1], hf=True), **{named: tok})


def lightning_module():
    import lightning as L

    class CharLM(L.LightningModule):
        """A GRU language model on characters, with AdamW and a per-step cosine schedule."""

        def __init__(self, total_steps: int = 1000):
            super().__init__()
            self.total_steps = total_steps
            self.emb = nn.Embedding(len(CHARS), 32)
            self.rnn = nn.GRU(32, 32, batch_first=True)
            self.head = nn.Linear(32, len(CHARS))

        def forward(self, x):
            return self.head(self.rnn(self.emb(x))[0])

        def training_step(self, batch, i):
            x, y = batch
            return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

        def validation_step(self, batch, i):
            x, y = batch
            self.log("val_loss", F.cross_entropy(self(x).flatten(0, 1), y.flatten()))

        def configure_optimizers(self):
            opt = torch.optim.AdamW(self.parameters(), lr=3e-3)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.total_steps)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return CharLM


def lightning_setup(max_steps: int = 200, seed: int = 0, **trainer_args):
    """(module, trainer, train loader, val loader) for a tiny Lightning fit on the CPU."""
    import lightning as L

    torch.manual_seed(seed)
    ids = char_ids()
    n = int(len(ids) * 0.9)
    gen = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(Blocks(ids[:n], hf=False), batch_size=8, shuffle=True, generator=gen)
    val = torch.utils.data.DataLoader(Blocks(ids[n:n + 10 * T + 1], hf=False), batch_size=8)
    options = dict(max_steps=max_steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_model_summary=False, enable_progress_bar=False, val_check_interval=100,
                   gradient_clip_val=1.0, num_sanity_val_steps=0)
    options.update(trainer_args)
    return lightning_module()(max_steps), L.Trainer(**options), train, val
