"""lmwidget: train a language model in the background of a Jupyter kernel, and steer it live."""

from .callbacks import Callback, EarlyStopping, ReduceLROnPlateau
from .checkpoint import CheckpointError
from .config import TrainConfig
from .data import CharTokenizer, Dataset
from .magics import load_ipython_extension
from .models import GPT, LSTM
from .run import LmwidgetWarning, Run, runs, train

__version__ = "0.1.0"
__all__ = ["train", "Run", "runs", "TrainConfig", "GPT", "LSTM", "CharTokenizer", "Dataset",
           "Callback", "EarlyStopping", "ReduceLROnPlateau", "LmwidgetWarning", "CheckpointError",
           "load_ipython_extension"]
