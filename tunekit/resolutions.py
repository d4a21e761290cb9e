"""The resolution spec parser, shared by every command.

A spec is a single side (``224``), a list (``160,224,320``) or a range
``LO..HI`` with an optional step (``112..448`` steps by 56: the paper's grid
112, 168, ..., 448; ``112..448:32`` steps by 32). A range always ends at HI:
``112..200`` is 112, 168 and 200. Square inputs only.
"""

from __future__ import annotations

from tunekit.errors import SpecError

DEFAULT_STEP = 56
MAX_SIDE = 4096


def _side(text: str, spec: str) -> int:
    if "x" in text.lower():
        raise SpecError(f"bad resolution spec {spec!r}: non-square resolutions ({text.strip()}) are not supported"
                        " yet; give one side per resolution (examples: 224, 160,224,320, 112..448)")
    try:
        value = int(text.strip())
    except ValueError:
        raise SpecError(f"bad resolution spec {spec!r}: {text.strip()!r} is not an integer "
                        "(examples: 224, 160,224,320, 112..448, 112..448:32)") from None
    if not 0 < value <= MAX_SIDE:
        raise SpecError(f"bad resolution spec {spec!r}: {value} is outside 1..{MAX_SIDE}")
    return value


def parse_resolutions(spec: str, multiple_of: int = 1) -> list[int]:
    """Parse a resolution spec into a sorted list of unique sides.

    Parameters
    ----------
    spec : str
        ``224``, ``160,224,320``, ``112..448`` or ``112..448:32``.
    multiple_of : int
        Every side must be a multiple of this (a ViT's patch size).

    Returns
    -------
    list[int]
        Sides in increasing order.

    Raises
    ------
    SpecError
        On anything that is not a valid spec.
    """
    spec = str(spec).strip()
    if not spec:
        raise SpecError("empty resolution spec (examples: 224, 160,224,320, 112..448)")
    if ".." in spec:
        lo_text, _, rest = spec.partition("..")
        hi_text, sep, step_text = rest.partition(":")
        lo, hi = _side(lo_text, spec), _side(hi_text, spec)
        step = DEFAULT_STEP
        if sep:
            try:
                step = int(step_text)
            except ValueError:
                raise SpecError(f"bad resolution spec {spec!r}: step {step_text!r} is not an integer") from None
            if step <= 0:
                raise SpecError(f"bad resolution spec {spec!r}: step must be positive")
        if lo > hi:
            raise SpecError(f"bad resolution spec {spec!r}: {lo} > {hi} (write LO..HI)")
        sides = list(range(lo, hi + 1, step))
        if sides[-1] != hi:  # a step that misses HI: the range still ends at HI
            sides.append(hi)
    else:
        sides = [_side(part, spec) for part in spec.split(",") if part.strip()]
        if not sides:
            raise SpecError(f"bad resolution spec {spec!r}")
    bad = [s for s in sides if s % multiple_of]
    if bad:
        raise SpecError(f"resolutions {bad} are not multiples of the patch size {multiple_of}")
    return sorted(set(sides))


def sides_for(spec: str, model: str | None) -> list[int]:
    """The sides ``spec`` names for zoo ``model`` (multiples of what it needs, e.g. ViT's patch size) or,
    for a user's ONNX file (``model`` None), any side."""
    multiple_of = 1
    if model:
        from tunekit.models import get_spec

        multiple_of = get_spec(model).multiple_of
    return parse_resolutions(spec, multiple_of)
