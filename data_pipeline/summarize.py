"""A readable summary of rendered shards: counts, speakers and scene statistics (+ a PNG)."""

import os

import numpy as np

from data_pipeline import shards

METADATA_KEYS = ("azimuth_deg", "separation_deg", "rt60", "drr_db", "tir_db", "snr_db",
                 "speaker_index", "speaker_sex", "room_index")


def split_metadata(directory: str, split: str) -> dict[str, np.ndarray]:
  """Metadata of every example of `split`, stacked: {key: [N, ...]} (with `noise_kind` when the
  dataset has noise)."""
  manifest, source = shards.open_split(directory, split)
  spec = shards.spec_from_manifest(manifest)
  keys = METADATA_KEYS + (("noise_kind",) if "noise_kind" in spec else ())
  rows = [shards.decode_record(source[i], spec, keys=keys) for i in range(len(source))]
  return {key: np.stack([row[key] for row in rows]) for key in keys}


def noise_text(meta: dict, noise_kinds) -> str:
  """'no noise' or 'SNR -6.0..+3.0 dB, noise babble 40%, diffuse 35%, ...' of one split."""
  snr = meta["snr_db"][np.isfinite(meta["snr_db"])]
  if not snr.size:
    return "no noise"
  text = f"SNR {np.min(snr):+.1f}..{np.max(snr):+.1f} dB"
  if "noise_kind" in meta and noise_kinds:
    kinds, counts = np.unique(meta["noise_kind"], return_counts=True)
    text += ", noise " + ", ".join(f"{noise_kinds[k]} {c / counts.sum():.0%}"
                                   for k, c in sorted(zip(kinds, counts), key=lambda kc: -kc[1]))
  return text


def _range_text(values: np.ndarray, what: str, fmt: str) -> str:
  finite = values[np.isfinite(values)]
  if not finite.size:
    return f"{what} n/a (one talker)"
  return f"{what} {format(np.min(finite), fmt)}..{format(np.max(finite), fmt)} dB"


def sex_pairing(sexes: np.ndarray) -> str:
  """'same-sex pairs 40%' over the mixtures of [N, S] sexes (-1 unknown) whose first two talkers'
  sexes are known; 'sex unknown' when none are."""
  if sexes.shape[1] < 2:
    return "one talker"
  known = (sexes[:, 0] >= 0) & (sexes[:, 1] >= 0)
  if not known.any():
    return "sex unknown"
  same = float(np.mean(sexes[known, 0] == sexes[known, 1]))
  suffix = "" if known.all() else f" of {int(known.sum())} with known sexes"
  return f"same-sex pairs {same:.0%}{suffix}"


def summary_text(config, directory: str, plot: bool = True) -> str:
  manifest = shards.read_manifest(directory)
  lines = [f"Shards in {directory} (config hash {manifest['config_hash']}): "
           f"{manifest['sample_rate']} Hz, {manifest['segment_samples']} samples per example, "
           f"channels {', '.join(manifest['channel_names'])}"]
  if manifest.get("skipped_files"):
    lines.append(f"corpus files skipped: {manifest['skipped_files']}")
  if manifest.get("babble_speakers"):
    lines.append("babble speakers (in no split's talker set): " + ", ".join(
        f"{split} {len(ids)}" for split, ids in manifest["babble_speakers"].items()))
  stats = {}
  for split in manifest["splits"]:
    meta = split_metadata(directory, split)
    stats[split] = meta
    lines.append(
        f"{split:5s}: {len(meta['rt60']):6d} mixtures, "
        f"{len(np.unique(meta['speaker_index'])):3d} speakers, {sex_pairing(meta['speaker_sex'])}, "
        f"rooms {len(np.unique(meta['room_index']))}, "
        f"RT60 {np.min(meta['rt60']):.2f}-{np.max(meta['rt60']):.2f} s, "
        f"{_range_text(meta['tir_db'], 'TIR', '+.1f')}, "
        + (f"separation median {np.nanmedian(meta['separation_deg']):.0f} deg, "
           if np.isfinite(meta["separation_deg"]).any() else "")
        + noise_text(meta, manifest.get("noise_kinds")))
  if plot:
    path = os.path.join(directory, "summary.png")
    _plot(stats, path)
    if os.path.exists(path):  # not without the plots extra
      lines.append(f"plots: {path}")
  return "\n".join(lines)


def _plot(stats: dict, path: str) -> None:
  from spatialsep_jax import extras
  if not extras.available("matplotlib", "plots", f"the plot {path}"):
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = (("separation_deg", "talker separation (deg)"), ("rt60", "RT60 (s)"),
            ("tir_db", "TIR (dB)"), ("drr_db", "DRR at reference mic (dB)"))
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3))
  for ax, (key, label) in zip(axes, panels):
    for split, meta in stats.items():
      values = np.ravel(meta[key])
      if np.isfinite(values).any():  # one-talker data has no TIR or separation
        ax.hist(values[np.isfinite(values)], bins=20, alpha=0.5, label=split, density=True)
    ax.set_xlabel(label)
  axes[1].legend()  # the RT60 panel: every split has one (one-talker data has no separation)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
