"""Inference Spatial Reduction (ISR): settings in the EDAFormer paper's notation, and per-network schemes.

A setting (:class:`ISRSetting`) is the *effective* key/value reduction of each attention level: encoder
stages 1-4, then -- for networks with attention in the decoder (EDAFormer) -- the decoder levels in the
paper's order c4, c3, c2. EDAFormer trains with ``[8,4,2,1]-[1,2,4]`` and recommends ``[16,8,2,1]-[2,4,8]``;
a spatial-reduction (SRA) network such as SegFormer has no decoder part: ``[8,4,2,1]``, ``[16,8,2,1]``.

What a network accepts is its :class:`ISRScheme`, owned by the network definition: the levels (name,
stride, training ratio, which ratios the level can take), how its feature maps round, and the rule that
a ratio must not exceed its feature map. The scheme is a small value-level API: :meth:`~ISRScheme.validate`,
:meth:`~ISRScheme.from_ratio`, :meth:`~ISRScheme.make`, :meth:`~ISRScheme.parse`,
:meth:`~ISRScheme.problem` (at an input size, naming the size from which it would fit) and
:meth:`~ISRScheme.describe`. Three kinds exist (see ``shared/design/sra.md`` section 8):

- :data:`EDAFORMER_ISR`: every level is a plain average pool, any positive ratio.
- :func:`conv_sra_scheme` (MiT/SegFormer, PVTv2 b0-b5, PVT v1): the keys/values come from a strided
  ``sr`` conv with ratio ``sr``; ISR adds an average pool after it, so a ratio must be a multiple of
  ``sr``, and a stage with ``sr = 1`` (stage 4) has no reduction path and stays at 1.
- :func:`linear_sra_scheme` (PVTv2-li): trained with an adaptive 7x7 key/value grid, which no ratio
  expresses; the training "setting" is therefore ``None``, and a setting replaces the adaptive pool by an
  average pool of that ratio in every stage (EDAFormer's li form).

The classmethods of :class:`ISRSetting` (``from_ratio``, ``make``, ``parse``) and :func:`isr_problem` /
:func:`feature_map_sizes` are EDAFormer's, as they always were.

Pure Python: the ROS parameter callbacks, the engine cache keys and the CLI use it without torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

#: Every network with ISR here is a four-stage pyramid: a setting always has four encoder ratios.
ENCODER_STAGES = 4
TRAINING_ENCODER: tuple[int, ...] = (8, 4, 2, 1)
TRAINING_DECODER: tuple[int, ...] = (1, 2, 4)  # c4, c3, c2
#: Decoder ratios a setting may have: EDAFormer's three levels, or none (no decoder attention).
DECODER_LEVELS: tuple[int, ...] = (len(TRAINING_DECODER), 0)
#: Down-sampling of the input at encoder stages 1-4 (decoder c4, c3, c2 sit on stages 4, 3, 2).
STAGE_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
#: The fixed key/value grid of PVTv2-li (``AdaptiveAvgPool2d(7)``).
LINEAR_SRA_GRID = 7


def _positive_ints(values: Iterable[object], what: str, counts: tuple[int, ...]) -> tuple[int, ...]:
    """``values`` as positive ints; their number must be one of ``counts`` (the first is the one named)."""
    try:
        items = list(values)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"ISR {what} must be a list of {counts[0]} positive integers, got {values!r}") from None
    if len(items) not in counts:
        raise ValueError(f"ISR {what} must have {counts[0]} values, got {len(items)}: {items}")
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


def _check_ratio(ratio: object) -> int:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or ratio < 1 or ratio != int(ratio):
        raise ValueError(f"ISR ratio must be a positive integer, got {ratio!r}")
    return int(ratio)


def _ratios_text(values: Sequence[int]) -> str:
    return f"[{','.join(map(str, values))}]"


@dataclass(frozen=True)
class ISRSetting:
    """Effective key/value reduction ratios: ``encoder`` stages 1-4 and ``decoder`` levels (EDAFormer: c4,
    c3, c2; empty for networks without decoder attention). The defaults are EDAFormer's training ratios.

    Construction checks the values (positive integers, four encoder stages, three decoder levels or none);
    whether a network can run a setting is its :class:`ISRScheme`'s business (:meth:`ISRScheme.validate`).
    """

    encoder: tuple[int, ...] = TRAINING_ENCODER
    decoder: tuple[int, ...] = TRAINING_DECODER

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoder", _positive_ints(self.encoder, "encoder", (ENCODER_STAGES,)))
        object.__setattr__(self, "decoder", _positive_ints(self.decoder, "decoder", DECODER_LEVELS))

    @classmethod
    def from_ratio(cls, ratio: int = 1) -> "ISRSetting":
        """EDAFormer: every training pool multiplied by ``ratio`` (1 restores training)."""
        return EDAFORMER_ISR.from_ratio(ratio)  # type: ignore[return-value]

    @classmethod
    def make(
        cls,
        ratio: int = 1,
        encoder: Sequence[int] | None = None,
        decoder: Sequence[int] | None = None,
    ) -> "ISRSetting":
        """EDAFormer: ``from_ratio(ratio)``, with the encoder and/or decoder replaced where given (empty =
        from ratio)."""
        return EDAFORMER_ISR.make(ratio, encoder, decoder)  # type: ignore[return-value]

    @classmethod
    def parse(cls, text: str) -> "ISRSetting":
        """EDAFormer: read ``"16,8,2,1-2,4,8"``, ``"[16,8,2,1]-[2,4,8]"`` or a plain ratio ``"2"``."""
        return EDAFORMER_ISR.parse(text)  # type: ignore[return-value]

    @classmethod
    def read(cls, text: str) -> "ISRSetting":
        """Any network's setting back from its text (``str(setting)``: ``"[16,8,2,1]"`` or
        ``"[16,8,2,1]-[2,4,8]"``), without checking it against a scheme."""
        try:
            return cls._from_text(text)
        except ValueError as exc:
            raise ValueError(f"cannot read ISR setting {text!r}: {exc}") from None

    @classmethod
    def _from_text(cls, text: str) -> "ISRSetting":
        enc, _, dec = text.replace("[", "").replace("]", "").replace(" ", "").partition("-")
        return cls(tuple(int(v) for v in enc.split(",")), tuple(int(v) for v in dec.split(",") if v))

    @property
    def is_training(self) -> bool:
        """EDAFormer's training ratios (other networks: :meth:`ISRScheme.is_training`)."""
        return self.encoder == TRAINING_ENCODER and self.decoder == TRAINING_DECODER

    @property
    def code_ratios(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """EDAFormer's official ``reduction_ratios`` (encoder, decoder listed c2, c3, c4) as multipliers."""
        enc = tuple(e / t for e, t in zip(self.encoder, TRAINING_ENCODER))
        dec = tuple(d / t for d, t in zip(reversed(self.decoder), reversed(TRAINING_DECODER)))
        return enc, dec

    def __str__(self) -> str:
        return _ratios_text(self.encoder) + (f"-{_ratios_text(self.decoder)}" if self.decoder else "")

    @property
    def slug(self) -> str:
        """File-name-safe form, e.g. ``enc16-8-2-1_dec2-4-8`` (``enc16-8-2-1`` without a decoder part)."""
        enc = f"enc{'-'.join(map(str, self.encoder))}"
        return enc + (f"_dec{'-'.join(map(str, self.decoder))}" if self.decoder else "")


@dataclass(frozen=True)
class ISRLevel:
    """One attention level a setting gives a ratio to."""

    name: str  # "encoder stage 1", "decoder level c4": used in messages
    stride: int  # input pixels per feature-map pixel at this level
    training: int  # the effective key/value reduction the network was trained with
    step: int = 1  # a ratio must be a positive multiple of this (a conv SRA's ``sr`` ratio)
    reducible: bool = True  # False: no reduction path; the ratio must stay ``training``

    def accepts(self, ratio: int) -> bool:
        return ratio == self.training if not self.reducible else ratio % self.step == 0

    def times(self, ratio: int) -> int:
        """The level's training ratio multiplied by ``ratio`` where it can be reduced."""
        return self.training * ratio if self.reducible else self.training


@dataclass(frozen=True)
class ISRScheme:
    """Which ISR settings a network accepts, and at which input sizes they run.

    ``map_rounding`` is how the stage maps follow the input: ``"ceil"`` for overlapping (padded) patch
    embeddings -- stage 1 ``ceil(H/4)``, each later stage ``ceil(h/2)`` -- and ``"floor"`` for PVT v1's
    non-overlapping ones. ``adaptive_training`` marks PVTv2-li, whose training reduction (an adaptive
    7x7 grid) is no setting: its training setting is ``None``.
    """

    title: str
    encoder: tuple[ISRLevel, ...]
    decoder: tuple[ISRLevel, ...] = ()
    map_rounding: str = "ceil"
    adaptive_training: bool = False

    def __post_init__(self) -> None:
        if len(self.encoder) != ENCODER_STAGES:
            raise ValueError(f"an ISR scheme has {ENCODER_STAGES} encoder levels, got {len(self.encoder)}")
        if self.map_rounding not in ("ceil", "floor"):
            raise ValueError(f"map_rounding must be 'ceil' or 'floor', got {self.map_rounding!r}")

    @property
    def levels(self) -> tuple[ISRLevel, ...]:
        return self.encoder + self.decoder

    # ---- settings -----------------------------------------------------------------------------
    @property
    def training(self) -> ISRSetting | None:
        """The setting the network was trained with (``None``: an adaptive grid, see the class doc)."""
        if self.adaptive_training:
            return None
        return ISRSetting(tuple(lv.training for lv in self.encoder), tuple(lv.training for lv in self.decoder))

    def is_training(self, setting: ISRSetting | None) -> bool:
        return setting == self.training

    def from_ratio(self, ratio: int = 1) -> ISRSetting | None:
        """Every ratio the network can reduce multiplied by ``ratio``; the others (a conv SRA's stage 4)
        stay. 1 is the training setting (``None`` for an adaptive grid)."""
        k = _check_ratio(ratio)
        if k == 1:
            return self.training
        return ISRSetting(tuple(lv.times(k) for lv in self.encoder), tuple(lv.times(k) for lv in self.decoder))

    def make(self, ratio: int = 1, encoder: Sequence[int] | None = None,
             decoder: Sequence[int] | None = None) -> ISRSetting | None:
        """``from_ratio(ratio)`` with the encoder and/or decoder replaced where given (empty = from ratio),
        validated."""
        base = self.from_ratio(ratio)
        if not encoder and not decoder:
            return base
        enc = tuple(encoder) if encoder else (base.encoder if base else None)
        if enc is None:
            raise ValueError(f"ISR for {self.title}: give the encoder ratios (its training reduction is an "
                             f"adaptive {LINEAR_SRA_GRID}x{LINEAR_SRA_GRID} grid, not ratios)")
        dec = tuple(decoder) if decoder else (base.decoder if base else ())
        return self.validate(ISRSetting(enc, dec))

    def parse(self, text: str) -> ISRSetting | None:
        """Read a plain ratio ``"2"`` or a setting ``"[16,8,2,1]"`` / ``"[16,8,2,1]-[2,4,8]"``, validated."""
        cleaned = text.replace("[", "").replace("]", "").replace(" ", "")
        try:
            if cleaned.isdigit() or (cleaned.startswith("-") and cleaned[1:].isdigit()):
                return self.from_ratio(int(cleaned))
            return self.validate(ISRSetting._from_text(text))
        except ValueError as exc:
            raise ValueError(f"cannot read ISR setting {text!r}: {exc}") from None

    def validate(self, setting: ISRSetting | None) -> ISRSetting | None:
        """``setting`` when this network can run it; ``ValueError`` with the reason otherwise."""
        if setting is None:
            if self.adaptive_training:
                return None
            raise ValueError(f"ISR for {self.title}: a setting is required (None means an adaptive grid)")
        if not isinstance(setting, ISRSetting):
            raise ValueError(f"ISR for {self.title}: expected an ISRSetting, got {setting!r}")
        if len(setting.decoder) != len(self.decoder):
            if not self.decoder:
                raise ValueError(f"ISR {setting}: {self.title} has no decoder attention; "
                                 f"give encoder ratios only (e.g. {self.example()})")
            raise ValueError(f"ISR decoder must have {len(self.decoder)} values, got {len(setting.decoder)}: "
                             f"{list(setting.decoder)}")
        for level, ratio in zip(self.levels, setting.encoder + setting.decoder):
            if level.accepts(ratio):
                continue
            if not level.reducible:
                raise ValueError(
                    f"ISR {setting} cannot run on {self.title}: {level.name} has no key/value reduction path "
                    f"(sr ratio 1), so its ratio stays {level.training}, got {ratio} (e.g. {self.example()})")
            multiples = ", ".join(str(level.step * k) for k in (1, 2, 3))
            raise ValueError(
                f"ISR {setting} cannot run on {self.title}: {level.name} reduces keys/values with a "
                f"{level.step}x{level.step} strided conv, so its ratio must be a multiple of {level.step} "
                f"({multiples}, ...), got {ratio}")
        return setting

    def text(self, setting: ISRSetting | None) -> str:
        """``str(setting)``; an adaptive scheme's training grid (None) as ``adaptive 7x7``."""
        return str(setting) if setting is not None else f"adaptive {LINEAR_SRA_GRID}x{LINEAR_SRA_GRID}"

    def example(self) -> str:
        """A valid setting's text, for messages."""
        return str(self.from_ratio(2))

    # ---- sizes ----------------------------------------------------------------------------------
    def feature_map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """Encoder stage 1-4 map sizes for a ``height``x``width`` input."""
        if self.map_rounding == "ceil":  # conv with padding k//2: floor((n-1)/s)+1
            first, step = (lambda n: (n - 1) // 4 + 1), (lambda n: (n - 1) // 2 + 1)
        else:
            first, step = (lambda n: n // 4), (lambda n: n // 2)
        sizes = [(first(height), first(width))]
        for _ in range(ENCODER_STAGES - 1):
            h, w = sizes[-1]
            sizes.append((step(h), step(w)))
        return sizes

    def _level_map(self, level: ISRLevel, sizes: list[tuple[int, int]]) -> tuple[int, int]:
        return sizes[STAGE_STRIDES.index(level.stride)]

    def _smallest_side(self, level: ISRLevel, ratio: int) -> int:
        """The smallest input side whose map at ``level`` is at least ``ratio`` (and 1) long."""
        need = max(ratio, 1)
        return level.stride * (need - 1) + 1 if self.map_rounding == "ceil" else level.stride * need

    def smallest_input(self, setting: ISRSetting | None) -> int:
        """The smallest input side (height and width alike) at which ``setting`` runs."""
        ratios = (setting.encoder + setting.decoder) if setting is not None else (1,) * len(self.levels)
        return max(self._smallest_side(lv, r) for lv, r in zip(self.levels, ratios))

    def problem(self, setting: ISRSetting | None, height: int, width: int) -> str | None:
        """Why ``setting`` (valid for this scheme) cannot run at ``height``x``width`` -- a ratio larger
        than its feature map, which would leave no key/value token -- and from which size it would; None
        when it runs."""
        sizes = self.feature_map_sizes(height, width)
        ratios = (setting.encoder + setting.decoder) if setting is not None else (1,) * len(self.levels)
        for level, ratio in zip(self.levels, ratios):
            h, w = self._level_map(level, sizes)
            if max(ratio, 1) > min(h, w):
                side = self.smallest_input(setting)
                shown = setting if setting is not None else f"(adaptive {LINEAR_SRA_GRID}x{LINEAR_SRA_GRID})"
                return (f"ISR {shown} does not fit a {height}x{width} input (it needs at least {side}x{side}): "
                        f"{level.name} has a {h}x{w} feature map, smaller than its key/value pool ratio {ratio}")
        return None

    def nearest_fitting(self, setting: ISRSetting | None, height: int, width: int) -> ISRSetting | None:
        """The setting closest to ``setting`` that runs at ``height``x``width``: each ratio larger than its
        feature map's shorter side is lowered to the largest ratio the level accepts within it (a multiple
        of a conv SRA's ``sr``, never below it), the others are kept (``setting`` itself when it fits; an
        adaptive grid, None, fits every size)."""
        if setting is None:
            return None
        sizes = self.feature_map_sizes(height, width)
        ratios = []
        for level, ratio in zip(self.levels, setting.encoder + setting.decoder):
            side = min(self._level_map(level, sizes))
            if level.reducible and ratio > side:
                ratio = max(level.step, side // level.step * level.step)
            ratios.append(ratio)
        return ISRSetting(tuple(ratios[:ENCODER_STAGES]), tuple(ratios[ENCODER_STAGES:]))

    def _doubled(self, encoder_stages: int, decoder: bool) -> ISRSetting:
        """The training ratios (a linear scheme's base ratios) with the first ``encoder_stages`` stages and,
        with ``decoder``, the decoder levels x2."""
        encoder = tuple(lv.times(2) if i < encoder_stages else lv.training for i, lv in enumerate(self.encoder))
        return ISRSetting(encoder, tuple(lv.times(2) if decoder else lv.training for lv in self.decoder))

    def paper_setting(self) -> ISRSetting:
        """The paper's recommended setting: stages 1-2 and the decoder x2 (EDAFormer ``[16,8,2,1]-[2,4,8]``;
        SegFormer ``[16,8,2,1]``, EDAFormer's Table 7)."""
        return self._doubled(2, decoder=True)

    def budget_ladder(self) -> tuple[ISRSetting | None, ...]:
        """Settings a frame budget chooses from, most accurate first: training; the decoder ratios x2
        (networks with decoder attention); :meth:`paper_setting`; then every reducible ratio x2, x3, x4.
        Repeats are left out."""
        rungs: list[ISRSetting | None] = [self.training]
        if self.decoder:
            rungs.append(self._doubled(0, decoder=True))
        rungs.append(self.paper_setting())
        rungs += [self.from_ratio(k) for k in (2, 3, 4)]
        return tuple(dict.fromkeys(rungs))

    def describe(self, setting: ISRSetting | None) -> str:
        """One line saying what ``setting`` does on this network."""
        if setting is None:
            return (f"{self.title}: adaptive {LINEAR_SRA_GRID}x{LINEAR_SRA_GRID} key/value grid in every stage "
                    f"(training; no ISR)")
        tag = " = training" if self.is_training(setting) else ""
        if self.adaptive_training:
            return (f"{self.title}: ISR {setting}{tag}: an average pool of ratio {_ratios_text(setting.encoder)} "
                    f"replaces the adaptive {LINEAR_SRA_GRID}x{LINEAR_SRA_GRID} key/value grid at stages 1-4")
        steps = [lv.step for lv in self.encoder]
        if any(s > 1 for s in steps):
            pools = [e // s for e, s in zip(setting.encoder, steps)]
            return (f"{self.title}: ISR {setting}{tag}: keys/values reduced by sr conv {_ratios_text(steps)} "
                    f"then average pool {_ratios_text(pools)} at encoder stages 1-4")
        names = ", ".join(lv.name.split()[-1] for lv in self.decoder)
        decoder = f", decoder {names}" if self.decoder else ""
        return f"{self.title}: ISR {setting}{tag}: key/value pool ratios of encoder stages 1-4{decoder}"


def _levels(training: Sequence[int], steps: Sequence[int] | None = None,
            reducible: Sequence[bool] | None = None) -> tuple[ISRLevel, ...]:
    steps = steps or (1,) * len(training)
    reducible = reducible or (True,) * len(training)
    return tuple(ISRLevel(f"encoder stage {i + 1}", STAGE_STRIDES[i], t, s, r)
                 for i, (t, s, r) in enumerate(zip(training, steps, reducible)))


#: EDAFormer: average pools at encoder stages 1-4 and decoder levels c4, c3, c2, any positive ratio.
EDAFORMER_ISR = ISRScheme(
    title="EDAFormer",
    encoder=_levels(TRAINING_ENCODER),
    decoder=tuple(ISRLevel(f"decoder level {name}", stride, t)
                  for name, stride, t in zip(("c4", "c3", "c2"), (32, 16, 8), TRAINING_DECODER)),
)


def conv_sra_scheme(title: str, sr_ratios: Sequence[int] = TRAINING_ENCODER,
                    map_rounding: str = "ceil") -> ISRScheme:
    """Conv spatial-reduction attention (MiT/SegFormer, PVTv2 b0-b5: ``ceil``; PVT v1: ``floor``): each
    ratio a multiple of the stage's ``sr`` ratio; stages with ``sr = 1`` stay at 1."""
    return ISRScheme(title, _levels(sr_ratios, sr_ratios, [r > 1 for r in sr_ratios]), map_rounding=map_rounding)


def linear_sra_scheme(title: str, base_ratios: Sequence[int] = TRAINING_ENCODER) -> ISRScheme:
    """PVTv2-li: training = the adaptive 7x7 grid (``None``); a setting is an average pool of any ratio in
    every stage; ``from_ratio(k)`` for k > 1 is ``k`` times ``base_ratios`` (k = 2: EDAFormer's shipped
    ``pvt_v2_b2_li`` pools ``[16,8,4,2]``)."""
    return ISRScheme(title, _levels(base_ratios), adaptive_training=True)


def feature_map_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """EDAFormer's encoder stage 1-4 map sizes: stage 1 = floor((n-1)/4)+1, then floor((n-1)/2)+1."""
    return EDAFORMER_ISR.feature_map_sizes(height, width)


def isr_problem(setting: ISRSetting, height: int, width: int) -> str | None:
    """Why EDAFormer cannot run ``setting`` at ``height``x``width`` (a pool larger than its feature map,
    and the input size it would need), or None."""
    return EDAFORMER_ISR.problem(setting, height, width)


class ISRInterface:
    """The ISR interface of a network (mixed into its ``nn.Module``): ``isr``, ``set_isr``, ``check_isr``.

    The network sets ``isr_scheme`` and implements ``_read_isr`` / ``_write_isr`` (where its attention
    modules keep their ratios); validation and messages come from the scheme, so every network accepts
    and rejects settings the same way.
    """

    isr_scheme: ISRScheme

    def _read_isr(self) -> ISRSetting | None:
        raise NotImplementedError

    def _write_isr(self, setting: ISRSetting | None) -> None:
        raise NotImplementedError

    @property
    def isr(self) -> ISRSetting | None:
        """The effective key/value reduction now in use (paper notation; None: an adaptive grid)."""
        return self._read_isr()

    def set_isr(self, ratio: int | ISRSetting | None = 1, encoder: Sequence[int] | None = None,
                decoder: Sequence[int] | None = None) -> ISRSetting | None:
        """Change the key/value reduction from the next forward on; no weight changes.

        ``ratio`` multiplies every training ratio the network can reduce (1 = training); ``encoder``
        (stages 1-4) and ``decoder`` (EDAFormer: c4, c3, c2) give effective ratios directly and override
        the ratio's values; an ``ISRSetting`` (or None, for an adaptive scheme's training grid) may be
        passed as ``ratio``. Raises ``ValueError`` with the reason, changing nothing, for anything the
        network cannot run.
        """
        if ratio is None or isinstance(ratio, ISRSetting):
            setting = self.isr_scheme.validate(ratio)
        else:
            setting = self.isr_scheme.make(ratio, encoder, decoder)
        self._write_isr(setting)
        return setting

    def check_isr(self, height: int, width: int, setting: ISRSetting | None = None) -> None:
        """Raise ``ValueError`` if ``setting`` (default: the current one) cannot run on this network, or not
        at a ``height``x``width`` input (naming the level, its map, the ratio and the size it needs)."""
        setting = self.isr_scheme.validate(setting if setting is not None else self.isr)
        problem = self.isr_scheme.problem(setting, height, width)
        if problem:
            raise ValueError(problem)


def nearest_fitting(setting: ISRSetting, height: int, width: int) -> ISRSetting:
    """EDAFormer: the setting closest to ``setting`` that runs at ``height``x``width`` (see
    :meth:`ISRScheme.nearest_fitting`)."""
    return EDAFORMER_ISR.nearest_fitting(setting, height, width)  # type: ignore[return-value]


class WithoutISR:
    """The ISR interface of a network whose attention has no key/value pooling to reduce (HRViT,
    ViT-CoMer; registered with no ISR scheme): it runs as trained, so ratio 1 is accepted as a no-op and
    any other setting raises ``ValueError`` saying that ISR does not apply to :attr:`attention_type`.

    :attr:`isr` is None, as for networks without the interface, so exported graphs are stamped
    "no ISR"; ``set_isr``/``check_isr`` have the signatures of :class:`ISRInterface` so callers need no
    special case.
    """

    #: What the network's attention is, for the error message.
    attention_type: str = "this network's attention"

    @property
    def isr(self) -> None:
        """No ISR setting: there are no pooling ratios to report."""
        return None

    def set_isr(self, ratio: int | ISRSetting | None = 1, encoder: Sequence[int] | None = None,
                decoder: Sequence[int] | None = None) -> None:
        """Accept ratio 1 (or None; nothing changes); ``ValueError`` for any other setting."""
        if ratio is None or isinstance(ratio, ISRSetting):
            self.check_isr(0, 0, ratio)
            return None
        _check_ratio(ratio)
        if ratio != 1 or encoder or decoder:
            self._refuse(f"isr_ratio {ratio}" + (f", encoder {list(encoder)}" if encoder else "")
                         + (f", decoder {list(decoder)}" if decoder else ""))
        return None

    def check_isr(self, height: int, width: int, setting: ISRSetting | None = None) -> None:
        """``ValueError`` unless ``setting`` is None (any input size)."""
        if setting is not None:
            self._refuse(str(setting))

    def _refuse(self, asked: str) -> None:
        name = getattr(self, "name", type(self).__name__)
        raise ValueError(f"ISR does not apply to {self.attention_type}: {name} has no key/value pooling ratios, "
                         f"so isr_ratio must be 1 (no ISR), got {asked}")
