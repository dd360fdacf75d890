"""Inference Spatial Reduction (ISR) settings of EDAFormer, in the paper's notation.

A setting is the *effective* key/value average-pool ratio of each attention level: encoder stages 1-4,
then decoder levels in the paper's order c4, c3, c2. Training uses ``[8,4,2,1]-[1,2,4]``; the paper's
recommended ISR is ``[16,8,2,1]-[2,4,8]``. ``ISRSetting.from_ratio(k)`` multiplies every training pool by k.

Pure Python: the ROS parameter callbacks, the engine cache keys and the CLI use it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

TRAINING_ENCODER: tuple[int, ...] = (8, 4, 2, 1)
TRAINING_DECODER: tuple[int, ...] = (1, 2, 4)  # c4, c3, c2
#: Down-sampling of the input at encoder stages 1-4 (decoder c4, c3, c2 sit on stages 4, 3, 2).
STAGE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)


def _positive_ints(values: Iterable[object], what: str, count: int) -> tuple[int, ...]:
    try:
        items = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"ISR {what} must be a list of {count} positive integers, got {values!r}") from None
    if len(items) != count:
        raise ValueError(f"ISR {what} must have {count} values, got {len(items)}: {items}")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            # accept integral floats from YAML/ROS only when exact
            if isinstance(v, float) and v.is_integer() and v >= 1:
                v = int(v)
            else:
                raise ValueError(f"ISR {what} must be positive integers, got {items}")
        out.append(int(v))
    return tuple(out)


@dataclass(frozen=True)
class ISRSetting:
    """Effective key/value pooling ratios: ``encoder`` stages 1-4, ``decoder`` levels c4, c3, c2."""

    encoder: tuple[int, ...] = TRAINING_ENCODER
    decoder: tuple[int, ...] = TRAINING_DECODER

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", _positive_ints(self.encoder, "encoder", 4))
        object.__setattr__(self, "decoder", _positive_ints(self.decoder, "decoder", 3))

    @classmethod
    def from_ratio(cls, ratio: int = 1) -> "ISRSetting":
        """Every training pool multiplied by ``ratio`` (1 restores training)."""
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1 or ratio != int(ratio):
            raise ValueError(f"ISR ratio must be a positive integer, got {ratio!r}")
        k = int(ratio)
        return cls(tuple(k * e for e in TRAINING_ENCODER), tuple(k * d for d in TRAINING_DECODER))

    @classmethod
    def make(
        cls,
        ratio: int = 1,
        encoder: Sequence[int] | None = None,
        decoder: Sequence[int] | None = None,
    ) -> "ISRSetting":
        """``from_ratio(ratio)``, with the encoder and/or decoder replaced where given (empty = from ratio)."""
        base = cls.from_ratio(ratio)
        return cls(
            tuple(encoder) if encoder else base.encoder,
            tuple(decoder) if decoder else base.decoder,
        )

    @classmethod
    def parse(cls, text: str) -> "ISRSetting":
        """Read ``"16,8,2,1-2,4,8"``, ``"[16,8,2,1]-[2,4,8]"`` or a plain ratio ``"2"``."""
        cleaned = text.replace("[", "").replace("]", "").replace(" ", "")
        try:
            if "-" not in cleaned:
                return cls.from_ratio(int(cleaned))
            enc, dec = cleaned.split("-")
            return cls(tuple(int(v) for v in enc.split(",")), tuple(int(v) for v in dec.split(",")))
        except ValueError as exc:
            raise ValueError(f"cannot read ISR setting {text!r}: {exc}") from None

    @property
    def is_training(self) -> bool:
        return self.encoder == TRAINING_ENCODER and self.decoder == TRAINING_DECODER

    @property
    def code_ratios(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The official code's ``reduction_ratios`` (encoder, decoder listed c2, c3, c4) as multipliers."""
        enc = tuple(e / t for e, t in zip(self.encoder, TRAINING_ENCODER))
        dec = tuple(d / t for d, t in zip(reversed(self.decoder), reversed(TRAINING_DECODER)))
        return enc, dec

    def __str__(self) -> str:
        return f"[{','.join(map(str, self.encoder))}]-[{','.join(map(str, self.decoder))}]"

    @property
    def slug(self) -> str:
        """File-name-safe form, e.g. ``enc16-8-2-1_dec2-4-8``."""
        return f"enc{'-'.join(map(str, self.encoder))}_dec{'-'.join(map(str, self.decoder))}"


def feature_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Encoder stage 1-4 map sizes for an input: stage 1 = floor((n-1)/4)+1, then floor((n-1)/2)+1."""
    sizes = [((height - 1) // 4 + 1, (width - 1) // 4 + 1)]
    for _ in range(3):
        h, w = sizes[-1]
        sizes.append(((h - 1) // 2 + 1, (w - 1) // 2 + 1))
    return sizes


def isr_problem(setting: ISRSetting, height: int, width: int) -> str | None:
    """Why ``setting`` cannot run at ``height``×``width`` (a pool larger than its feature map), or None."""
    sizes = feature_map_sizes(height, width)
    levels = [(f"encoder stage {i + 1}", sizes[i], setting.encoder[i]) for i in range(4)]
    levels += [(f"decoder level {name}", sizes[stage], setting.decoder[j])
               for j, (name, stage) in enumerate((("c4", 3), ("c3", 2), ("c2", 1)))]
    for where, (h, w), pool in levels:
        if pool > min(h, w):
            return (
                f"ISR {setting} does not fit a {height}x{width} input: {where} has a {h}x{w} feature map, "
                f"smaller than its key/value pool ratio {pool}"
            )
    return None


def nearest_fitting(setting: ISRSetting, height: int, width: int) -> ISRSetting:
    """The setting closest to ``setting`` that runs at ``height``×``width``: each pool larger than its
    feature map is reduced to the map's smaller side, the others are kept (``setting`` itself when it
    fits)."""
    sizes = feature_map_sizes(height, width)
    encoder = tuple(min(pool, *sizes[i]) for i, pool in enumerate(setting.encoder))
    decoder = tuple(min(pool, *sizes[stage]) for pool, stage in zip(setting.decoder, (3, 2, 1)))
    return ISRSetting(encoder, decoder)


class WithoutISR:
    """The ISR interface of a network whose attention has no key/value pooling to reduce (HRViT,
    ViT-CoMer): it runs as trained, so the training setting (ratio 1) is accepted as a no-op and any
    other setting raises ``ValueError`` saying that ISR does not apply to :attr:`attention_type`.

    :attr:`isr` is None, as for networks without the interface, so exported graphs are stamped
    "no ISR"; ``set_isr``/``check_isr`` have EDAFormer's signatures so callers need no special case.
    """

    #: What the network's attention is, for the error message.
    attention_type: str = "this network's attention"

    @property
    def isr(self) -> None:
        """No ISR setting: there are no pooling ratios to report."""
        return None

    def set_isr(
        self,
        ratio: int | ISRSetting = 1,
        encoder: Sequence[int] | None = None,
        decoder: Sequence[int] | None = None,
    ) -> ISRSetting:
        """Accept the training setting (nothing changes); ``ValueError`` for any other."""
        setting = ratio if isinstance(ratio, ISRSetting) else ISRSetting.make(ratio, encoder, decoder)
        self.check_isr(0, 0, setting)
        return setting

    def check_isr(self, height: int, width: int, setting: ISRSetting | None = None) -> None:
        """``ValueError`` unless ``setting`` is None or the training setting (any input size)."""
        if setting is not None and not setting.is_training:
            name = getattr(self, "name", type(self).__name__)
            raise ValueError(
                f"ISR does not apply to {self.attention_type}: {name} has no key/value pooling ratios, "
                f"so isr_ratio must be 1 (the training setting {ISRSetting()}), got {setting}")
