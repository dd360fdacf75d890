"""Node parameters from a declarative table: descriptors, ranges, read-only flags and validation.

Each node lists its parameters as :class:`ParamSpec` rows. :func:`declare_parameters` declares them
with a ``ParameterDescriptor`` (type, description, integer/float range, read-only), so
``ros2 param describe`` documents them, and checks the start-up values. :func:`make_validator`
builds the on-set-parameters callback: rclpy itself rejects a wrong type, an out-of-range number or
a read-only parameter (a floating-point parameter also takes an integer -- ``ros2 param set /seg
frame_budget_ms 150`` sends one -- and the nodes see it as a float); the callback adds the checks a
descriptor cannot express (string choices, relations between parameters, a number where a
floating-point parameter takes any type) and answers ``SetParametersResult(successful=False,
reason=...)``.
:func:`add_parameter_callbacks` installs the check and the "apply the new values" step on Jazzy
(post-set callback) and on Humble (which has no post-set callback: the values are applied from the
on-set callback once they passed, just before rclpy stores them).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

#: A check on the candidate values of all a node's parameters: a reason to reject, or None.
CrossCheck = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: its default (which fixes its type), its meaning and the values it takes."""

    name: str
    default: Any  # bool, int, float, str, or a list (then give param_type)
    description: str
    read_only: bool = False
    minimum: int | float | None = None  # inclusive; needs maximum too (a descriptor range)
    maximum: int | float | None = None
    choices: tuple[str, ...] = ()
    #: a ParameterType constant; inferred from a scalar default when None
    param_type: int | None = None

    @property
    def is_float(self) -> bool:
        return isinstance(self.default, float)

    def descriptor(self) -> ParameterDescriptor:
        """The ParameterDescriptor that ``ros2 param describe`` shows. A floating-point parameter is
        dynamically typed, so that an integer (``150``, from the command line or a YAML file) is
        accepted: :meth:`check` rejects anything but a number and :meth:`coerce` makes it a float."""
        descriptor = ParameterDescriptor(
            name=self.name, type=self.param_type or _parameter_type(self.default),
            description=self.description,
            read_only=self.read_only, dynamic_typing=self.is_float)
        if self.choices:
            descriptor.additional_constraints = f"one of: {', '.join(self.choices)}"
        if self.minimum is not None and self.maximum is not None:
            if isinstance(self.default, int) and not isinstance(self.default, bool):
                descriptor.integer_range = [IntegerRange(
                    from_value=int(self.minimum), to_value=int(self.maximum), step=1)]
            elif isinstance(self.default, float):
                descriptor.floating_point_range = [FloatingPointRange(
                    from_value=float(self.minimum), to_value=float(self.maximum), step=0.0)]
        return descriptor

    def coerce(self, value: Any) -> Any:
        """The value as the node uses it: an integer given to a floating-point parameter as a float."""
        if self.is_float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not acceptable for this parameter, or None if it is."""
        if self.is_float and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{self.name} must be a number, got {value!r}"
        if self.choices and value not in self.choices:
            return f"{self.name} must be one of {', '.join(self.choices)}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{self.name} must be finite, got {value}"
        if not isinstance(value, (int, float)):
            return None
        if self.minimum is not None and value < self.minimum:
            return f"{self.name} must be >= {self.minimum}, got {value}"
        if self.maximum is not None and value > self.maximum:
            return f"{self.name} must be <= {self.maximum}, got {value}"
        return None


def declare_parameters(node: Node, specs: Sequence[ParamSpec],
                       cross_check: CrossCheck | None = None) -> dict[str, Any]:
    """Declare ``specs`` on ``node`` and return their values (defaults or overrides).

    Raises ``ValueError`` with the reason when a start-up value (e.g. from a YAML file) is invalid.
    """
    lists = [spec for spec in specs if isinstance(spec.default, (list, tuple))]
    node.declare_parameters("", [(spec.name, spec.default, spec.descriptor())
                                 for spec in specs if spec not in lists])
    for spec in lists:
        _declare_list(node, spec)
    values = current_values(node, specs)
    reasons = [reason for spec in specs if (reason := spec.check(values[spec.name]))]
    if cross_check is not None and (reason := cross_check(values)):
        reasons.append(reason)
    if reasons:
        raise ValueError(f"invalid parameters for node {node.get_name()}: {'; '.join(reasons)}")
    return values


def _declare_list(node: Node, spec: ParamSpec) -> None:
    """Declare a list parameter whose default may be empty.

    rclpy types an empty default list as a byte array, after which ``[16, 8, 2, 1]`` is rejected as
    the wrong type, and an empty list in a YAML file arrives with no type at all. So the parameter is
    declared by its type (writable), set to the default when nothing (or ``[]``) overrides it, and
    only then made read-only where the spec says so.
    """
    descriptor = spec.descriptor()
    writable = spec.descriptor()
    writable.read_only = False
    param_type = Parameter.Type(descriptor.type)
    declared = node.declare_parameter(spec.name, param_type, writable)
    if declared.type_ == Parameter.Type.NOT_SET:
        [result] = node.set_parameters([Parameter(spec.name, param_type, list(spec.default))])
        if not result.successful:
            raise ValueError(f"cannot initialise parameter {spec.name}: {result.reason}")
    if descriptor.read_only:
        node.set_descriptor(spec.name, descriptor)


def make_validator(node: Node, specs: Sequence[ParamSpec], cross_check: CrossCheck | None = None
                   ) -> Callable[[list[Parameter]], SetParametersResult]:
    """An on-set-parameters callback checking ``specs`` (and ``cross_check``) before a change.

    Parameters not in ``specs`` (e.g. ``use_sim_time``) are left to other callbacks.
    """
    by_name = {spec.name: spec for spec in specs}

    def validate(parameters: list[Parameter]) -> SetParametersResult:
        changes = _changes(specs, parameters)
        reasons = [reason for name, value in changes.items()
                   if (reason := by_name[name].check(value))]
        if cross_check is not None and changes and not reasons:
            candidate = current_values(node, specs)
            candidate.update(changes)
            if reason := cross_check(candidate):
                reasons.append(reason)
        if reasons:
            return SetParametersResult(successful=False, reason="; ".join(reasons))
        return SetParametersResult(successful=True)

    return validate


def add_parameter_callbacks(node: Node, specs: Sequence[ParamSpec],
                            apply: Callable[[Mapping[str, Any]], None],
                            cross_check: CrossCheck | None = None) -> None:
    """Validate parameter changes (:func:`make_validator`) and then ``apply(values)`` with every value
    of ``specs`` as it is after the change; works with Humble's rclpy and with Iron and later.

    Iron and later: ``apply`` runs in the post-set callback. Humble has none: ``apply`` runs at the
    end of the on-set callback with the candidate values, once they passed every check (rclpy then
    stores them; no other on-set callback of this node can veto them)."""
    validate = make_validator(node, specs, cross_check)
    if hasattr(node, "add_post_set_parameters_callback"):
        node.add_on_set_parameters_callback(validate)
        node.add_post_set_parameters_callback(lambda _changed: apply(current_values(node, specs)))
        return

    def validate_then_apply(parameters: list[Parameter]) -> SetParametersResult:
        result = validate(parameters)
        changes = _changes(specs, parameters)
        if result.successful and changes:
            apply({**current_values(node, specs), **changes})
        return result

    node.add_on_set_parameters_callback(validate_then_apply)


def _changes(specs: Iterable[ParamSpec], parameters: list[Parameter]) -> dict[str, Any]:
    """The new values ``parameters`` give the parameters of ``specs`` (coerced as :meth:`ParamSpec.coerce`);
    other parameters (e.g. ``use_sim_time``) are left out."""
    by_name = {spec.name: spec for spec in specs}
    return {p.name: by_name[p.name].coerce(p.value) for p in parameters if p.name in by_name}


def current_values(node: Node, specs: Iterable[ParamSpec]) -> dict[str, Any]:
    """The node's current value of each parameter in ``specs`` (integers of floating-point ones as
    floats)."""
    return {spec.name: spec.coerce(node.get_parameter(spec.name).value) for spec in specs}


def _parameter_type(default: Any) -> int:
    if isinstance(default, bool):  # before int: bool is an int
        return ParameterType.PARAMETER_BOOL
    if isinstance(default, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(default, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(default, str):
        return ParameterType.PARAMETER_STRING
    raise TypeError(f"cannot infer the parameter type of {default!r}: give param_type")
