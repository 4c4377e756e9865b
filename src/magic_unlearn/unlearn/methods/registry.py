"""The method registry: name -> :class:`~magic_unlearn.unlearn.methods.base.Method` subclass."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from magic_unlearn.unlearn.methods.base import Method
from magic_unlearn.unlearn.methods.regularizers import (
    L2SP,
    Regularized,
    RetainKL,
    RetainNLL,
)

METHODS: dict[str, type[Method]] = {}
REGULARIZERS = ("l2sp", "retain_kl", "retain_nll")

M = TypeVar("M", bound=type[Method])


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator adding a :class:`Method` subclass to :data:`METHODS` under ``name``."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"register_method({name!r}): {cls!r} is not a Method subclass")
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name]}")
        METHODS[name] = cls
        cls.name = name
        return cls

    return deco


def get_method(name: str, **kwargs: Any) -> Method:
    """Instantiate a registered method. Regulariser kwargs work with any method.

    Args:
        name: a key of :data:`METHODS`.
        **kwargs: the method's own arguments, plus ``l2sp``, ``retain_kl``, ``retain_nll``
            (coefficients; > 0 adds :class:`L2SP` / :class:`RetainKL` / :class:`RetainNLL`).

    Raises:
        ValueError: an unknown name or argument (the message lists the valid ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown unlearning method {name!r}; registered: {sorted(METHODS)}")
    kwargs = dict(kwargs)
    reg_kw = {k: kwargs.pop(k) for k in REGULARIZERS if k in kwargs}
    cls = METHODS[name]
    sig = inspect.signature(cls.__init__)
    valid = [p for p in sig.parameters if p not in ("self", "args", "kwargs")]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ValueError(
            f"method {name!r} got unknown argument(s) {bad}; valid: {valid} "
            f"(+ regularisers {', '.join(REGULARIZERS)})"
        )
    method = cls(**kwargs)
    regs: list[Method] = []
    if float(reg_kw.get("l2sp") or 0) > 0:
        regs.append(L2SP(float(reg_kw["l2sp"])))
    if float(reg_kw.get("retain_kl") or 0) > 0:
        regs.append(RetainKL(float(reg_kw["retain_kl"])))
    if float(reg_kw.get("retain_nll") or 0) > 0:
        regs.append(RetainNLL(float(reg_kw["retain_nll"])))
    return Regularized(method, regs) if regs else method


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph as one line of plain text (Sphinx roles and ``code``
    marks dropped): the description ``magic-unlearn`` lists."""
    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def describe_methods() -> list[tuple[str, str]]:
    """(name, summary) of every registered method, sorted by name; the summary is the first
    paragraph of the class docstring as one line (a whole sentence, not its first line)."""
    return [(n, _summary(METHODS[n].__doc__)) for n in sorted(METHODS)]
