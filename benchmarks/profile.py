"""Where a tuned model's time goes: per task, the best measured kernel time from a tuning database.

    python benchmarks/profile.py --model resnet18 --res 112 --db tuning_logs/reference-rocketlake-2c.db

Prepares the model as tune and build do (the target's layout and Winograd choice), looks up each
runtime task's best record (its tuning measurement: kernel alone, weights warm in cache, so the sum
underestimates a whole run), and prints time x uses, share of the sum, and GFLOP/s where the task
is a convolution or matmul. Tasks with no record print '-'.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--res", type=int, default=224)
    parser.add_argument("--db", required=True)
    parser.add_argument("--target", default="host")
    args = parser.parse_args()

    from tunekit import database, frontend
    from tunekit.keys import Key
    from tunekit.targets import resolve_target

    spec = resolve_target(args.target)
    target = spec.tvm_target()
    key = Key(args.model, args.res, args.res)
    mod, _ = frontend.to_relax(frontend.onnx_graph(key, model=args.model))
    tasks, _ = frontend.runtime_tasks(frontend.prepare(mod, target, spec.conv_layout, spec.conv_winograd), target)
    db = database.open_database(args.db, target)
    rows = []
    for task in tasks:
        sec = db.best_sec(db.workload_id(task.mod)) if db.has_workload(task.mod) else None
        rows.append((task.name, task.weight, None if sec is None else sec * 1e6 * task.weight))
    total = sum(us for _, _, us in rows if us is not None)
    print(f"{args.model} at {args.res} on {spec.name} ({spec.tvm.get('mcpu', '')}), layout {spec.conv_layout}, "
          f"winograd {spec.conv_winograd}: sum of best kernel times {total / 1000:.2f} ms")
    for name, uses, us in sorted(rows, key=lambda r: -(r[2] or 0)):
        share = f"{100 * us / total:5.1f}%" if us is not None else "    -"
        print(f"  {share}  {us or 0:8.1f} us  x{uses}  {name}")


if __name__ == "__main__":
    main()
