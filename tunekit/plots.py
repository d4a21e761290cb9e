"""The PNG figures: a bench report, a tuning convergence curve, an evaluation of a bundle."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def _figure(path: str | Path, *subplots: int, figsize: tuple[float, float]):
    """A headless matplotlib figure, laid out and written to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*subplots, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


def bench(report: dict, path: str | Path) -> None:
    """Latency and GFLOP/s against resolution, one line per backend (``tunekit bench --plot``)."""
    from tunekit.benching import present

    with _figure(path, 1, 2, figsize=(11, 4.2)) as (fig, (left, right)):
        res = [r["resolution"] for r in report["rows"]]
        for b in present(report):
            pts = [(r["resolution"], r[b]) for r in report["rows"] if b in r]
            xs = [p[0] for p in pts]
            left.errorbar(xs, [s["median_ms"] for _, s in pts],
                          yerr=[[s["median_ms"] - s["p10_ms"] for _, s in pts],
                                [s["p90_ms"] - s["median_ms"] for _, s in pts]],
                          marker="o", capsize=3, label=b)
            right.plot(xs, [s["gflops_per_s"] for _, s in pts], marker="o", label=b)
        peak = (report.get("peak") or {}).get("gflops")
        if peak:
            right.axhline(peak, color="grey", linestyle="--", linewidth=1, label=f"measured peak {peak:.0f}")
        left.set(xlabel="input resolution (px, square)", ylabel="latency, ms (median, p10-p90)", xticks=res,
                 title="latency (lower is better)")
        right.set(xlabel="input resolution (px, square)", ylabel="achieved GFLOP/s", xticks=res,
                  title="throughput (higher is better)")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle(f"{report['model']} on {report['machine']['cpu']} ({report['threads']} threads)", fontsize=10)


def convergence(curve: dict, title: str, path: str | Path) -> None:
    """Estimated latency (relative to untuned) against trials, per resolution (``tunekit db curve --plot``)."""
    with _figure(path, figsize=(7, 4.2)) as (fig, ax):
        for res, values in curve["est_ms"].items():
            ax.plot(curve["trials"], [v / values[0] for v in values],
                    label=f"{res}x{res} ({values[0]:.2f} -> {values[-1]:.2f} ms)")
        ax.set(xlabel="trials (in the order measured)", ylabel="estimated latency / untuned estimate",
               title="convergence (lower is better)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.suptitle(title, fontsize=9)


def evaluation(report: dict, path: str | Path) -> None:
    """Accuracy against mean latency: a point per resolution, per policy and the oracle (``tunekit evaluate --plot``)."""
    with _figure(path, figsize=(7, 4.5)) as (fig, ax):
        res = report["resolutions"]
        ax.plot([r["mean_ms"] for r in res], [100 * r["accuracy"] for r in res], "o-", color="tab:gray",
                label="fixed resolution")
        for r in res:
            ax.annotate(f"{r['resolution'][0]}x{r['resolution'][1]}", (r["mean_ms"], 100 * r["accuracy"]),
                        textcoords="offset points", xytext=(5, -12), fontsize=8)
        for p in report["policies"]:
            ax.plot(p["mean_ms"], 100 * p["accuracy"], "s", label=p["policy"])
        o = report["oracle"]
        ax.plot(o["mean_ms"], 100 * o["accuracy"], "*", markersize=12, color="black", label="oracle")
        ax.set_xlabel("mean latency per image (ms)")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{report['model']} on {Path(report['data']).name}: {report['oracle']['images']} images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
