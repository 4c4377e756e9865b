"""Unlearning engine: one training loop, methods as registered loss objects, attribution weights.

See :mod:`.loop` (``train_loop``), :mod:`.losses` (methods), :mod:`.weights` (score -> weights).
"""

from magic_unlearn.unlearn.loop import LoopConfig, LoopResult, LoraSettings, train_loop
from magic_unlearn.unlearn.losses import METHODS, Method, get_method, register_method

__all__ = ["LoopConfig", "LoopResult", "LoraSettings", "train_loop", "METHODS", "Method",
           "get_method", "register_method"]
