"""lmwidget: train a language model in the background of a Jupyter kernel, and steer it live."""

from .callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from .checkpoint import CheckpointError
from .compare import compare
from .config import TrainConfig
from .corpus import prepare
from .data import CharTokenizer, Dataset
from .lrfind import LRFinder, lr_find
from .magics import load_ipython_extension
from .models import GPT, LSTM
from .fit import fit
from .loop import Loop, StopTraining, steer
from .remote import RemoteRun, attach
from .retention import keep_runs
from .run import Run, train
from .source import CONTROLS, LmwidgetWarning, Source, runs

__version__ = "0.2.0"
__all__ = ["train", "Run", "steer", "Loop", "fit", "StopTraining", "Source", "CONTROLS", "attach", "RemoteRun", "runs", "keep_runs", "lr_find", "LRFinder", "compare", "prepare", "TrainConfig", "GPT", "LSTM", "CharTokenizer", "Dataset",
           "Callback", "EarlyStopping", "ReduceLROnPlateau", "LmwidgetWarning", "CheckpointError",
           "load_ipython_extension"]
