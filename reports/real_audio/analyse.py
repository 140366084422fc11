"""Measurements of a separation of a real recording (no references exist, nobody listened):

  python reports/real_audio/analyse.py MIX.wav STREAM1.wav STREAM2.wav [--out=reports/real_audio]

Writes analysis.json and spectrograms.png / energy.png to --out:
  * per stream (and the mixture): level (RMS dBFS), the fraction of 50-ms frames in which it
    is the louder stream by 6 dB or more, its waveform correlation with the mixture, its
    median F0 over voiced frames (librosa's pYIN), the fraction of frames voiced, and the
    median spectral flatness (near 0: harmonic, speech-like; near 1: noise-like);
  * between the streams: the correlation of their waveforms (leakage of one into the other)
    and of their frame energies in dB (near 1: both follow the same activity, i.e. the same
    talker or the whole mixture; near 0 or below: distinct activity patterns, as two talkers
    who take turns would give);
  * the part of the mixture the streams explain: 10 log10 of the mixture energy over the
    residual energy of mixture - sum of streams.
"""

import argparse
import json
import os
import sys

import numpy as np
import soundfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

FRAME_S = 0.05


def frame_db(x, rate):
  n = int(FRAME_S * rate)
  frames = x[:len(x) // n * n].reshape(-1, n)
  return 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)


def median_f0(x, rate):
  import librosa
  f0, voiced, _ = librosa.pyin(x.astype(np.float32), fmin=60, fmax=400, sr=rate,
                               frame_length=1024)
  voiced_f0 = f0[voiced & np.isfinite(f0)]
  return (float(np.median(voiced_f0)) if voiced_f0.size else float("nan"),
          float(np.mean(voiced)))


def median_flatness(x):
  """Median spectral flatness over frames (0: tonal/harmonic, 1: white noise)."""
  import librosa
  return float(np.median(librosa.feature.spectral_flatness(y=x.astype(np.float32), n_fft=256,
                                                            hop_length=128)))


def analyse(mix_path, stream_paths):
  mixture, rate = soundfile.read(mix_path, dtype="float32", always_2d=True)
  mixture = mixture[:, 0]
  streams = np.stack([soundfile.read(p, dtype="float32")[0] for p in stream_paths])
  energies = np.stack([frame_db(s, rate) for s in streams])
  active = frame_db(mixture, rate) > frame_db(mixture, rate).max() - 40
  result = {"mixture": mix_path, "rate": rate, "seconds": len(mixture) / rate,
            "mixture_rms_dbfs": float(10 * np.log10(np.mean(mixture ** 2))),
            "mixture_median_f0_hz": None, "mixture_voiced_fraction": None,
            "mixture_spectral_flatness": median_flatness(mixture), "streams": []}
  result["mixture_median_f0_hz"], result["mixture_voiced_fraction"] = median_f0(mixture, rate)
  for k, (path, stream) in enumerate(zip(stream_paths, streams)):
    others = np.delete(energies, k, axis=0).max(axis=0)
    f0, voiced = median_f0(stream, rate)
    result["streams"].append({
        "file": path, "rms_dbfs": float(10 * np.log10(np.mean(stream ** 2) + 1e-20)),
        "louder_by_6db_fraction": float(np.mean((energies[k] > others + 6)[active])),
        "correlation_with_mixture": float(np.corrcoef(stream, mixture)[0, 1]),
        "median_f0_hz": f0, "voiced_fraction": voiced,
        "spectral_flatness": median_flatness(stream)})
  if len(streams) == 2:
    result["waveform_correlation_between_streams"] = float(np.corrcoef(*streams)[0, 1])
    result["energy_correlation_between_streams"] = float(
        np.corrcoef(energies[0][active], energies[1][active])[0, 1])
  residual = mixture - streams.sum(axis=0)
  result["mixture_over_residual_db"] = float(
      10 * np.log10(np.sum(mixture ** 2) / (np.sum(residual ** 2) + 1e-20)))
  return result, mixture, streams, energies, rate


def plot(out_dir, mixture, streams, energies, rate, names):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import scipy.signal
  signals = [mixture] + list(streams)
  fig, axes = plt.subplots(len(signals), 1, figsize=(11, 2.2 * len(signals)), sharex=True)
  for ax, signal, name in zip(axes, signals, names):
    f, t, spec = scipy.signal.stft(signal, fs=rate, nperseg=256, noverlap=192)
    db = 20 * np.log10(np.abs(spec) + 1e-9)
    ax.pcolormesh(t, f / 1000, db, vmin=db.max() - 80, vmax=db.max(), shading="auto",
                  cmap="magma")
    ax.set_ylabel("kHz")
    ax.set_title(name, fontsize=9)
  axes[-1].set_xlabel("time (s)")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "spectrograms.png"), dpi=60)
  plt.close(fig)
  fig, ax = plt.subplots(figsize=(11, 3))
  t = np.arange(energies.shape[1]) * FRAME_S
  ax.plot(t, frame_db(mixture, rate)[:len(t)], color="0.6", lw=0.8, label=names[0])
  for k, energy in enumerate(energies):
    ax.plot(t, energy, lw=0.8, label=names[k + 1])
  ax.set_xlabel("time (s)")
  ax.set_ylabel("dBFS (50-ms frames)")
  ax.legend(fontsize=8, loc="lower right")
  ax.set_ylim(-90, 0)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "energy.png"), dpi=80)
  plt.close(fig)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("mixture")
  parser.add_argument("streams", nargs="+")
  parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
  args = parser.parse_args()
  from spatialsep_jax import io_safety
  result, mixture, streams, energies, rate = analyse(args.mixture, args.streams)
  names = ["mixture"] + [f"stream {k + 1}" for k in range(len(streams))]
  plot(args.out, mixture, streams, energies, rate, names)
  io_safety.atomic_write_json(os.path.join(args.out, "analysis.json"), result)
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
