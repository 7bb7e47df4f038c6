"""Where a run starts from what the user gave: the model resolved once, and the run's config, new or resumed."""

from __future__ import annotations

from lmwidget.checkpoint import saving as checkpoint
from lmwidget.models import pretrained
from lmwidget.models.resolve import choose

from .config import TrainConfig


def configure(model=None, data=None, options: dict | None = None, *, resume=None,
              command_line: bool = False) -> tuple[TrainConfig, object, dict | None]:
    """Resolve the model option once and make the run's config from it.

    Args:
        model: "gpt" (None), "lstm", an nn.Module, "MODULE:NAME", or a model directory.
        data: the data option (None: "builtin", or a resumed run's own).
        options: the other options (TrainConfig's).
        resume: a checkpoint file or a directory of them, to continue.
        command_line: the options came from the command line (see resolve.choose).

    Returns:
        (config, module, restore): the config (plain values; its model is None when `module`
        is yours), the module given or imported (None for a model built from the config), and
        the checkpoint read (None without `resume`).

    Raises:
        ValueError: an option, the model or the checkpoint is refused (each says why).
        TypeError: an unknown option.
    """
    options = dict(options or {})
    choice = choose(model, options.get("seed", TrainConfig.seed), command_line)
    if choice.module is not None:  # a pretrained module of yours: its own tokenizer, checked
        if "tokenizer" not in options and (own := pretrained.own_tokenizer(choice.module)):
            options["tokenizer"] = own
        pretrained.check_tokenizer(choice.module, options.get("tokenizer", TrainConfig.tokenizer))
    if resume is None:
        config = TrainConfig.from_options(model=choice.option, data="builtin" if data is None else data,
                                          **options)
        return config, choice.module, None
    restore = checkpoint.read(resume)
    given = choice.module if choice.module is not None else None if model is None else choice.option
    return checkpoint.resume_config(restore, given, data, options), choice.module, restore
