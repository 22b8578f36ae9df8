"""Plotting helpers shared by the CLI, the demo and the notebooks (matplotlib, Agg): every
function writes a PNG to `path` and returns the path, so scripts make the same pictures as
the notebooks.
"""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.images import save_png, tile_images  # noqa: E402


def _save(fig, path: str) -> str:
  try:
    return save_png(
        path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
  finally:
    plt.close(fig)


def scatter_limit(samples: dict[str, np.ndarray], margin: float = 1.05) -> float:
  """The half-width of a square [-lim, lim]^2 that shows every finite point of every
  panel (at least 1)."""
  finite = [np.abs(np.asarray(x))[np.all(np.isfinite(x), axis=1)] for x in samples.values()]
  peak = max((float(a.max()) for a in finite if a.size), default=1.0)
  return max(peak * margin, 1.0)


def outside(x: np.ndarray, lim: float) -> int:
  """How many of the points x (n, 2) lie outside [-lim, lim]^2 or are not finite."""
  x = np.asarray(x)
  return int(np.sum(~np.all(np.isfinite(x) & (np.abs(x) <= lim), axis=1)))


def scatter(samples: dict[str, np.ndarray], path: str, lim: float | None = None,
            title: str = "") -> str:
  """Side-by-side 2-D scatter plots, one panel per named sample set of shape (n, 2).

  lim=None fits the (common, square) axes to the data, so no point is hidden; with a
  fixed lim, each panel's title says how many points lie outside [-lim, lim]^2.
  """
  lim = scatter_limit(samples) if lim is None else float(lim)
  fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4), squeeze=False)
  for ax, (name, x) in zip(axes[0], samples.items()):
    x = np.asarray(x)
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    hidden = outside(x, lim)
    ax.set_title(name + (f"\n{hidden} of {len(x)} points outside the axes" if hidden
                         else ""))
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def image_grid(images: np.ndarray, path: str, ncol: int | None = None) -> str:
  """Images (n, H, W, C) with values in [0, 1] tiled into one picture."""
  n, h, w, c = np.shape(images)
  ncol = ncol or int(np.ceil(np.sqrt(n)))
  nrow = int(np.ceil(n / ncol))
  grid = tile_images(images, ncol)
  fig, ax = plt.subplots(figsize=(max(2, ncol * w / 16), max(2, nrow * h / 16)))
  ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None,
            vmin=0, vmax=1)
  ax.axis("off")
  return _save(fig, path)


def trajectories_2d(paths: dict[str, np.ndarray], path: str, lim: float = 3.0,
                    n_show: int = 64) -> str:
  """2-D paths, one panel per name: arrays (n_times, n, 2); start dots, end crosses."""
  fig, axes = plt.subplots(1, len(paths), figsize=(4 * len(paths), 4), squeeze=False)
  for ax, (name, p) in zip(axes[0], paths.items()):
    p = np.asarray(p)[:, :n_show]
    ax.plot(p[:, :, 0], p[:, :, 1], lw=0.6, alpha=0.7)
    ax.scatter(p[0, :, 0], p[0, :, 1], s=6, c="k", label="start")
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=10, c="r", marker="x", label="end")
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(name)
  axes[0][0].legend(loc="upper right", fontsize=7)
  return _save(fig, path)


def marginals_over_time(snapshots: np.ndarray, times: Sequence[float], path: str,
                        lim: float = 3.0, title: str = "") -> str:
  """2-D histograms of samples (n_times, n, 2) at each time: the marginal densities."""
  snapshots = np.asarray(snapshots)
  k = len(times)
  fig, axes = plt.subplots(1, k, figsize=(2.6 * k, 2.8), squeeze=False)
  for ax, x, t in zip(axes[0], snapshots, times):
    ax.hist2d(x[:, 0], x[:, 1], bins=80, range=[[-lim, lim], [-lim, lim]], cmap="magma")
    ax.set_title(f"t = {t:.2f}")
    ax.set_aspect("equal")
    ax.axis("off")
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def density_grid(logp: dict[str, np.ndarray], lim: float, path: str) -> str:
  """Densities exp(logp) on a square grid, one panel per name: arrays (G, G)."""
  fig, axes = plt.subplots(1, len(logp), figsize=(4 * len(logp), 4), squeeze=False)
  for ax, (name, lp) in zip(axes[0], logp.items()):
    ax.imshow(np.exp(np.asarray(lp)), origin="lower", extent=[-lim, lim, -lim, lim],
              cmap="viridis")
    ax.set_title(name)
  return _save(fig, path)


def image_trajectory_grid(traj: np.ndarray, times: Sequence[float], path: str) -> str:
  """Rows: samples; columns: times. traj: (n_times, n, H, W, C) in [0, 1]."""
  traj = np.asarray(traj)
  t, n = traj.shape[:2]
  tiles = np.transpose(traj, (1, 0, 2, 3, 4)).reshape((n * t,) + traj.shape[2:])
  return image_grid(tiles, path, ncol=t)


def line_plot(xs, series: dict[str, Sequence[float]], path: str, xlabel: str,
              ylabel: str, logx: bool = False) -> str:
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, ys in series.items():
    ax.plot(xs, ys, marker="o", label=name)
  if logx:
    ax.set_xscale("log", base=2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.legend()
  return _save(fig, path)


def marginals_grid(rows: dict[str, np.ndarray], times: Sequence[float], path: str,
                   lim: float = 3.0, bins: int = 80, title: str = "") -> str:
  """2-D histograms, one row per name and one column per time: each row's samples
  (n_times, n, 2) at `times`, e.g. the forward marginals against the reverse SDE's and the
  probability flow's."""
  k = len(times)
  fig, axes = plt.subplots(len(rows), k, figsize=(2.3 * k, 2.4 * len(rows)), squeeze=False)
  for r, (name, snaps) in enumerate(rows.items()):
    snaps = np.asarray(snaps)
    for c, (x, t) in enumerate(zip(snaps, times)):
      ax = axes[r][c]
      ax.hist2d(x[:, 0], x[:, 1], bins=bins, range=[[-lim, lim], [-lim, lim]],
                cmap="magma")
      ax.set_aspect("equal")
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(f"t = {t:.2f}")
      if c == 0:
        ax.set_ylabel(name)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def trajectories_over_density(logp: np.ndarray, lim: float, paths: np.ndarray, path: str,
                              title: str = "", n_show: int = 64) -> str:
  """2-D paths (n_times, n, 2) drawn over a density exp(logp) (G, G) on [-lim, lim]^2:
  start dots, end crosses."""
  fig, ax = plt.subplots(figsize=(4.5, 4.5))
  ax.imshow(np.exp(np.asarray(logp)), origin="lower", extent=[-lim, lim, -lim, lim],
            cmap="Greys")
  p = np.asarray(paths)[:, :n_show]
  ax.plot(p[:, :, 0], p[:, :, 1], lw=0.8, alpha=0.8)
  ax.scatter(p[0, :, 0], p[0, :, 1], s=8, c="k", label="start")
  ax.scatter(p[-1, :, 0], p[-1, :, 1], s=14, c="r", marker="x", label="end")
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=7)
  if title:
    ax.set_title(title)
  return _save(fig, path)


def paths_overlay(paths: dict[str, np.ndarray], path: str, lim: float = 3.0,
                  n_show: int = 16, title: str = "") -> str:
  """Several named sets of 2-D paths (n_times_k, n, 2) from the same starting points on
  one panel, one colour per set; a set with at most 30 times (a few-step sampler) is drawn
  with a dot at every state. Start: black dots; ends: crosses in the set's colour."""
  fig, ax = plt.subplots(figsize=(5, 5))
  for i, (name, p) in enumerate(paths.items()):
    p = np.asarray(p)[:, :n_show]
    colour = f"C{i}"
    marker = "o" if p.shape[0] <= 30 else None
    for j in range(p.shape[1]):
      ax.plot(p[:, j, 0], p[:, j, 1], lw=0.9, alpha=0.8, color=colour, marker=marker,
              ms=3, label=name if j == 0 else None)
    ax.scatter(p[-1, :, 0], p[-1, :, 1], s=28, c=colour, marker="x", zorder=3)
  first = np.asarray(next(iter(paths.values())))[0, :n_show]
  ax.scatter(first[:, 0], first[:, 1], s=10, c="k", label="start (x_T)", zorder=3)
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=7)
  if title:
    ax.set_title(title)
  return _save(fig, path)
