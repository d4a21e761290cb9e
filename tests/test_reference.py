"""The committed reference records (tuning_logs/reference/<mcpu>-<cores>c/) still apply.

A record applies only to the exact TIR of its task, so any change to the shared preparation (layout,
Winograd, which weights are layout-free, fusion) silently turns a reference set into dead data:
`make bench` would build default schedules and call them tuned. Each set must cover every task of
resnet18 at the anchor resolution, as prepared today, for its own CPU class.
"""

import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parent.parent / "tuning_logs" / "reference"
SETS = sorted(p for p in REFERENCE.glob("*-*c") if p.is_dir())


@pytest.mark.slow
@pytest.mark.parametrize("ref", SETS, ids=[p.name for p in SETS])
def test_reference_records_cover_the_current_preparation(ref):
    from tvm.s_tir import meta_schedule as ms

    from tunekit import frontend
    from tunekit.keys import Key
    from tunekit.targets import resolve_target

    mcpu, cores = ref.name.rsplit("-", 1)
    spec = resolve_target(json.dumps({"kind": "llvm", "mcpu": mcpu, "num-cores": int(cores.rstrip("c"))}))
    target = spec.tvm_target()
    db = ms.database.JSONDatabase(str(ref / "database_workload.json"), str(ref / "database_tuning_record.json"),
                                  allow_missing=False)
    graph = frontend.onnx_graph(Key("resnet18", 224, 224), model="resnet18")
    tasks, _ = frontend.tasks_of(graph, target, spec.conv_layout, spec.conv_winograd)
    missing = [t.name for t in tasks if db.query_tuning_record(t.mod, target, t.name) is None]
    assert not missing, f"{ref.name}: no record applies to {missing}; re-tune and re-export (tuning_logs/README.md)"

