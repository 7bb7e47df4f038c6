"""lmwidget: train a language model in the background of a Jupyter kernel, and steer it live."""

from lmwidget.core.callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from lmwidget.checkpoint.saving import CheckpointError
from lmwidget.views.compare import compare
from lmwidget.training.config import TrainConfig
from lmwidget.data.corpus import prepare
from lmwidget.data.dataset import CharTokenizer, Dataset
from lmwidget.lrfind.finder import LRFinder, lr_find
from .magics import load_ipython_extension
from lmwidget.models.builtin import GPT, LSTM
from lmwidget.adapters.fit import fit
from lmwidget.adapters.loop import Loop, StopTraining, steer
from lmwidget.remote.remote_run import RemoteRun, attach
from lmwidget.core.retention import keep_runs
from lmwidget.training.run import Run, train
from lmwidget.core.source import CONTROLS, LmwidgetWarning, Source, runs

__version__ = "0.2.0"
__all__ = ["train", "Run", "steer", "Loop", "fit", "StopTraining", "Source", "CONTROLS", "attach", "RemoteRun", "runs", "keep_runs", "lr_find", "LRFinder", "compare", "prepare", "TrainConfig", "GPT", "LSTM", "CharTokenizer", "Dataset",
           "Callback", "EarlyStopping", "ReduceLROnPlateau", "LmwidgetWarning", "CheckpointError",
           "load_ipython_extension"]
