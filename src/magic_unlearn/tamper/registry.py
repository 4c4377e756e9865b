"""The attack interface and registry: a suite's ``kind:`` name -> :class:`Attack` subclass.

Everything the tamper stage needs to know about an attack family is declared on its class, so
config validation, the suite runner, the reference-curve cache, the derived suites and the
output metrics ask the registry instead of comparing kind strings::

    @register_attack("finetune")
    class FinetuneAttack(Attack):
        trains = True
        def corpora(self, attack): return {"data": attack.data}
        def run(self, model, attack, ctx, *, corpora, original, initial): ...

The built-in attacks live in :mod:`magic_unlearn.tamper.attacks` (importing
:mod:`magic_unlearn.tamper` registers them).
"""

from __future__ import annotations

import abc
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from torch import nn

from magic_unlearn.data import TokenizedCorpus

if TYPE_CHECKING:  # typing only: config and context import this module (a cycle at runtime)
    from magic_unlearn.tamper.config import AttackConfig
    from magic_unlearn.tamper.context import AttackContext

Curve = list[dict[str, Any]]


class AttackSkipped(Exception):
    """Raised by :meth:`Attack.run` when the attack cannot run here; the message (the reason)
    is recorded in the curve entry as ``skipped``."""


@dataclass
class AttackRun:
    """What :meth:`Attack.run` returns.

    Attributes:
        points: the curve: ``{"step", "hazard_acc", "hazard_loss", "general_acc",
            "general_loss", ...}`` per point, ``step`` counting what the class's ``x_label``
            says.
        info: extra fields of the curve entry (e.g. ``lr`` and ``sweep`` of a learning-rate
            sweep, ``ablated_layers``, ``lens``); JSON-serialisable.
    """

    points: Curve
    info: dict[str, Any] = field(default_factory=dict)


class Attack(abc.ABC):
    """One attack family (the ``kind`` of an :class:`~magic_unlearn.tamper.config.AttackConfig`).

    Attributes:
        name: the kind name (set by :func:`register_attack`).
        x_label: what a point's ``step`` counts: optimiser ``"step"`` or model ``"layer"``
            (the verdict reads a layer curve's last point as the model's own accuracy).
        trains: the attack optimises the model for ``steps`` steps (after ``pre_steps``) at
            ``lr`` (or each of ``lrs``): its strength is a training budget, which derived
            suites and budget sweeps scale, and its eval overhead is reported.
        needs_original: needs the pre-unlearning (base) model's weights; skipped without them,
            and the original's hash enters the cache key.
        starts_at_model: the curve's first point (step 0) is the unattacked model's score,
            measured once per suite run and passed to :meth:`run` as ``initial``.
    """

    name: ClassVar[str] = "attack"
    x_label: ClassVar[str] = "step"
    trains: ClassVar[bool] = False
    needs_original: ClassVar[bool] = False
    starts_at_model: ClassVar[bool] = True

    def corpora(self, attack: AttackConfig) -> dict[str, str]:
        """Role -> corpus name this run needs (resolved and tokenized by the context, hashed
        into the cache key, handed to :meth:`run` as ``corpora``); default none."""
        return {}

    @abc.abstractmethod
    def run(
        self,
        model: nn.Module,
        attack: AttackConfig,
        ctx: AttackContext,
        *,
        corpora: dict[str, TokenizedCorpus],
        original: nn.Module | None,
        initial: dict[str, float] | None,
    ) -> AttackRun:
        """Attack ``model`` (leave it unchanged) and return its curve.

        Args:
            model: the model under attack.
            attack: this attack's settings.
            ctx: the suite run's shared state (``ctx.scorer`` measures a model).
            corpora: the rows of :meth:`corpora`, by role.
            original: the pre-unlearning model (never None when ``needs_original``).
            initial: the unattacked model's score when ``starts_at_model`` (else None).

        Raises:
            AttackSkipped: the attack cannot run with what the context holds.
        """


ATTACKS: dict[str, type[Attack]] = {}

A = TypeVar("A", bound=type[Attack])


def register_attack(name: str) -> Callable[[A], A]:
    """Class decorator adding an :class:`Attack` subclass to :data:`ATTACKS` under ``name``."""

    def deco(cls: A) -> A:
        if not (isinstance(cls, type) and issubclass(cls, Attack)):
            raise TypeError(f"register_attack({name!r}): {cls!r} is not an Attack subclass")
        if name in ATTACKS and ATTACKS[name] is not cls:
            raise ValueError(f"attack kind {name!r} is already registered by {ATTACKS[name]}")
        if cls.x_label not in ("step", "layer"):
            raise ValueError(f"attack {name!r}: x_label must be 'step' or 'layer'")
        ATTACKS[name] = cls
        cls.name = name
        return cls

    return deco


def get_attack(kind: str) -> Attack:
    """The registered attack of ``kind``.

    Raises:
        ValueError: an unknown kind (the message lists the registered ones).
    """
    if kind not in ATTACKS:
        raise ValueError(f"attack kind must be one of {sorted(ATTACKS)}, got {kind!r}")
    return ATTACKS[kind]()


def _summary(doc: str | None) -> str:
    """A docstring's first paragraph as one line of plain text (Sphinx roles and ``code``
    marks dropped): the description ``magic-unlearn`` lists."""
    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")


def describe_attacks() -> list[tuple[str, str]]:
    """(kind, summary) of every registered attack, sorted by kind; the summary is the first
    paragraph of the class docstring as one line."""
    return [(n, _summary(ATTACKS[n].__doc__)) for n in sorted(ATTACKS)]
