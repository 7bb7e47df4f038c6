"""lmwidget: train a language model in the background of a Jupyter kernel, and steer it live."""

import importlib

from .adapters.chatter import quiet
from .adapters.fit import fit
from .adapters.loop import Loop, StopTraining
from .core import viewers
from .core.callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from .core.registry import runs
from .core.retention import keep_runs
from .core.source import CONTROLS, Source
from .data.corpus import prepare
from .data.chars import CharTokenizer
from .data.dataset import Dataset
from .jobs.steer import steer
from .errors import CheckpointError, LmwidgetError, LmwidgetWarning, ModelDirError
from .lrfind.finder import LRFinder, lr_find
from .magics import load_ipython_extension
from .models.builtin import GPT, LSTM
from .remote.remote_run import RemoteRun, attach
from .training.config import TrainConfig
from .training.entry import train
from .training.run import Run
from .version import __version__
from .views.compare import compare
from .writers.tensorboard import write_tensorboard
from .views.dashboard import Dashboard
from .views.export import export, to_html

# the views attach to every source from here: core never imports a view
viewers.use(dashboard=Dashboard, export=export, to_html=to_html)

__all__ = ["train", "Run", "steer", "Loop", "fit", "StopTraining", "Source", "CONTROLS", "attach",
           "RemoteRun", "runs", "keep_runs", "lr_find", "LRFinder", "compare", "prepare",
           "TrainConfig", "GPT", "LSTM", "CharTokenizer", "Dataset", "Callback", "EarlyStopping",
           "ReduceLROnPlateau", "LmwidgetError", "LmwidgetWarning", "CheckpointError",
           "ModelDirError", "load_ipython_extension", "quiet", "HFCallback", "LightningCallback",
           "write_tensorboard"]

# the frameworks' callbacks import their framework: only when asked for by name
_LAZY = {"HFCallback": "lmwidget.jobs.hf", "LightningCallback": "lmwidget.jobs.lightning"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lmwidget' has no attribute {name!r}")
