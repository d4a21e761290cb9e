"""Cross-resolution transfer: schedules tuned at one resolution, adapted to another.

The same task at two resolutions (same model, same fused function, so same
operator, channels, kernel and stride; only H and W differ) has the same TIR
loop structure with other extents. MetaSchedule generates the same design space
for both, instruction for instruction; only the tile-size decisions depend on
the extents. So a donor's trace is adapted by:

1. finding the new task's design space whose instructions match the donor's
   (same kinds, same order, up to post-processing), else the donor is skipped;
2. keeping every decision, except tile sizes whose product no longer equals the
   new loop extent: those are re-fitted from the innermost level out, each
   level taking the largest factor of what is left that does not exceed the
   donor's tile (so register and cache tiles stay as the donor had them);
3. replaying, post-processing and checking it like any other candidate.

Donors are found by name in the ``tasks`` table (``TuningDatabase.donors``): records of the task with the
same name, model and batch at other resolutions, nearest resolution first.

Across CPU classes (``siblings``): records are bound to the exact target they were measured on, but a
workload's best record on another class with the same vector ISA (reference records of znver4 on a znver5
host, imported with ``tunekit db import``) is a schedule for the very same TIR, so it replays as it is and
is measured here like any seed. Records of another vector width are not used: their register tiles were
chosen for other registers.
"""

from __future__ import annotations

import json
import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunekit.tuning_database import Donor

log = logging.getLogger("tunekit.transfer")


class TransferSkipped(Exception):
    """A donor trace that cannot be adapted to the new shapes; the message says why."""


def _shape_of(trace) -> str:
    """The trace's text up to post-processing with decisions and tuned annotation values blanked:
    equal for the design space a record came from and that space at another resolution."""
    import re

    text = str(trace.simplified(remove_postproc=True))
    text = re.sub(r"decision=(\[[^\]]*\]|-?\d+)", "decision=?", text)
    return re.sub(r"ann_val=\d+", "ann_val=?", text)


def _sampling_kinds(trace) -> list[str]:
    """Instruction kinds before post-processing, dead instructions removed (stored records are simplified)."""
    return [inst.kind.name for inst in trace.simplified(remove_postproc=True).insts]


def refit(tiles: list[int], extent: int) -> list[int]:
    """Tile sizes for ``extent`` close to ``tiles`` (outer..inner): inner levels keep their size when it divides."""
    out = []
    left = extent
    for tile in reversed(tiles[1:]):
        factor = max(d for d in range(1, min(int(tile), left) + 1) if left % d == 0)
        out.append(factor)
        left //= factor
    return [left, *reversed(out)]


def adapt(donor_trace, mod, target, name: str = "main"):
    """A MetaSchedule ``Schedule`` of ``mod`` following ``donor_trace`` (re-fitted), or TransferSkipped."""
    from tunekit import fallback

    spaces, postprocs = fallback.design_spaces(mod, target, name)
    wanted, shape = _sampling_kinds(donor_trace), _shape_of(donor_trace)
    spaces = [s for s in spaces if _sampling_kinds(s.trace) == wanted]
    spaces.sort(key=lambda s: _shape_of(s.trace) != shape)  # the exact same space first
    if not spaces:
        raise TransferSkipped("no design space of the new shape has the donor's instructions")
    space = spaces[0].trace
    donor_decisions = [(inst, donor_trace.decisions[inst]) for inst in donor_trace.insts
                       if inst in donor_trace.decisions]
    new_sampling = [inst for inst in space.insts if inst in space.decisions]
    if len(donor_decisions) < len(new_sampling):
        raise TransferSkipped("the donor has fewer decisions than the new design space")
    trace = space
    for (old_inst, old), inst in zip(donor_decisions, new_sampling):
        if old_inst.kind.name != inst.kind.name:
            raise TransferSkipped(f"decision kinds differ ({old_inst.kind.name} vs {inst.kind.name})")
        if inst.kind.name == "SamplePerfectTile":
            extent = math.prod(int(x) for x in space.decisions[inst])
            decision = [int(x) for x in old]
            if math.prod(decision) != extent:
                decision = refit(decision, extent)
        else:
            decision = old
        trace = trace.with_decision(inst, decision, remove_postproc=True)
    try:
        return fallback.replay(mod, trace, postprocs)
    except ValueError as exc:  # e.g. a compute location the new loops reject
        raise TransferSkipped(str(exc)) from None


def donor_trace(db, donor: Donor):
    """The donor record's trace."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    return TuningRecord.from_json(json.loads(donor.record_json), db.workload_by_id(donor.workload_id)).trace


def siblings(db, mod, target, wid: int, name: str = "main") -> tuple[list[tuple[str, object]], list[str]]:
    """The workload's best record on every other CPU class of this target's vector ISA, replayed here:
    ([(the class, e.g. "llvm/znver4/2c", schedule)], [skip reasons])."""
    from tvm.s_tir.meta_schedule.database import TuningRecord

    from tunekit import fallback
    from tunekit.database import short_target

    records = db.sibling_records(wid) if target.kind.name == "llvm" else []
    if not records:
        return [], []
    isa = fallback.vector_isa(target)
    found = [(key, text) for key, text in records if _vector_isa(key) == isa]
    if not found:
        return [], []
    _, postprocs = fallback.design_spaces(mod, target, name)
    out, skipped = [], []
    for key, text in found:
        try:
            trace = TuningRecord.from_json(json.loads(text), db.workload_by_id(wid)).trace
            out.append((short_target(key), fallback.replay(mod, trace, postprocs)))
        except Exception as exc:  # a record that does not replay here skips that class, never the run
            skipped.append(f"{name} from {short_target(key)}: {_why(exc)}")
    for reason in skipped:
        log.info("sibling skipped: %s", reason)
    return out, skipped


def _why(exc: Exception) -> str:
    """An exception as one short line: its type and the last line of its message."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1][:200] if text else ''}"


def _vector_isa(key: str):
    """The vector ISA of a stored LLVM target's JSON; None for another kind, or a CPU this LLVM does not know."""
    import tvm

    from tunekit import fallback

    config = json.loads(key)
    if config.get("kind") != "llvm":
        return None
    try:
        return fallback.vector_isa(tvm.target.Target(config))
    except Exception:  # noqa: BLE001 - an mcpu of another LLVM: not a class to take records from
        return None


def candidates(db, mod, target, model: str, batch: int, task_name: str, resolution: int,
               exclude_wid: int | None, limit: int = 2) -> tuple[list[tuple[Donor, object]], list[str]]:
    """Adapted schedules from the nearest tuned resolutions: ([(donor, schedule)], [skip reasons])."""
    out, skipped = [], []
    for donor in db.donors(model, batch, task_name, resolution, exclude_wid, limit):
        try:
            out.append((donor, adapt(donor_trace(db, donor), mod, target, task_name)))
        except TransferSkipped as exc:
            skipped.append(f"{task_name} from {donor.resolution}: {exc}")
        except Exception as exc:  # anything TVM raises on an odd trace skips that donor, never the run
            skipped.append(f"{task_name} from {donor.resolution}: {_why(exc)}")
    for reason in skipped:
        log.info("transfer skipped: %s", reason)
    return out, skipped
