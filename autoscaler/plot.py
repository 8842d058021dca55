"""Render timelines (``jobyard autoscale --record``) as a PNG with matplotlib."""

from __future__ import annotations

from .errors import RecordError
from .timeline import read_timeline


def plot_timeline(paths: str | list[str], output: str, title: str | None = None,
                  labels: list[str] | None = None) -> str:
    """Plot one timeline, or several one above the other on a shared time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [paths] if isinstance(paths, str) else list(paths)
    labels = labels or paths
    series = [read_timeline(p) for p in paths]
    if not all(series):
        raise RecordError("a timeline is empty: nothing to plot")
    figure, axes = plt.subplots(len(paths), 1, figsize=(13, 4.2 * len(paths)), squeeze=False, sharex=True)
    for axis, rows, label in zip(axes[:, 0], series, labels):
        _panel(axis, rows, label)
    axes[-1, 0].set_xlabel("seconds since start")
    if title:
        figure.suptitle(title, fontsize=13)
    figure.tight_layout()
    try:
        figure.savefig(output, dpi=110)
    except OSError as exc:
        raise RecordError(f"cannot write {output}: {exc}") from exc
    finally:
        plt.close(figure)
    return output


def _panel(axis, rows: list[dict], label: str) -> None:
    start = rows[0]["time"]
    times = [r["time"] - start for r in rows]
    jobs = axis.twinx()
    jobs.fill_between(times, [r["ready"] for r in rows], step="post", alpha=0.25, color="tab:orange",
                      label="ready (all priority lists)")
    jobs.step(times, [r["in_flight"] for r in rows], where="post", color="tab:purple", lw=1, label="in flight")
    jobs.step(times, [r["running"] for r in rows], where="post", color="tab:green", lw=1, label="running")
    jobs.set_ylabel("jobs")
    jobs.set_ylim(bottom=0)
    alive = [r["hosts_current"] + r.get("draining", 0) for r in rows]
    axis.step(times, alive, where="post", color="tab:blue", lw=2.2, label="hosts (incl. draining)")
    axis.step(times, [r["hosts_current"] for r in rows], where="post", color="tab:blue", lw=1, ls=":",
              label="hosts taking jobs")
    axis.step(times, [r["hosts_desired"] for r in rows], where="post", color="black", lw=1, ls="--",
              label="hosts desired")
    for time_, row in zip(times, rows):
        if row["decision"] in ("out", "in"):
            axis.axvline(time_, color="tab:red" if row["decision"] == "in" else "tab:cyan", lw=0.8, alpha=0.7)
    axis.plot([], [], color="tab:cyan", lw=0.8, label="scale-out decision")
    axis.plot([], [], color="tab:red", lw=0.8, label="scale-in decision (drain)")
    axis.set_ylabel("hosts")
    axis.set_ylim(bottom=0, top=max(max(alive), max(r["hosts_desired"] for r in rows)) + 1)
    axis.set_zorder(jobs.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.set_title(label, fontsize=11, loc="left")
    handles = axis.get_legend_handles_labels()[0] + jobs.get_legend_handles_labels()[0]
    names = axis.get_legend_handles_labels()[1] + jobs.get_legend_handles_labels()[1]
    axis.legend(handles, names, loc="upper left", bbox_to_anchor=(1.07, 1.0), fontsize=8, framealpha=0.9)
    axis.grid(alpha=0.3)
