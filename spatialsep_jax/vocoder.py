"""Cochlear-implant simulation: a channel vocoder approximating what a CI user hears.

The signal is split into `num_channels` bands spaced evenly along the cochlea (Greenwood's
map, human constants), each band's temporal envelope (Hilbert magnitude, low-passed at
`envelope_cutoff_hz`) modulates a carrier (band-limited noise by default, or a sine at the
band's geometric centre), each modulated band is scaled to the RMS of its analysis band, and
the bands are summed. Filters are Butterworth, applied forwards and backwards (zero phase).

Defaults: 16 channels (the electrode count of the Advanced Bionics devices whose T-mic the study
uses; CI simulations typically use 8 to 16), bands from 250 Hz (about the lower edge of common
clinical maps) up to min(8 kHz, 0.95 * rate / 2), and a 160 Hz envelope cut-off (keeps
voice-pitch modulation, as many CI simulations do). The noise carrier is drawn from `seed`,
so vocoded estimates and vocoded references share their carriers and metrics compare
envelopes, not noise.
"""

import numpy as np
import scipy.signal

CARRIERS = ("noise", "sine")
# Greenwood (1990) human cochlea: f = A (10^(a x) - k), x the relative place 0..1.
GREENWOOD_A, GREENWOOD_ALPHA, GREENWOOD_K = 165.4, 2.1, 0.88


def greenwood_band_edges(num_channels, low_hz, high_hz):
  """`[num_channels + 1]` band edges in Hz, equally spaced in cochlear place."""
  if num_channels < 1 or not 0 < low_hz < high_hz:
    raise ValueError(f"need num_channels >= 1 and 0 < low_hz < high_hz; got {num_channels}, "
                     f"{low_hz}, {high_hz}")
  place = lambda hz: np.log10(hz / GREENWOOD_A + GREENWOOD_K) / GREENWOOD_ALPHA
  places = np.linspace(place(low_hz), place(high_hz), num_channels + 1)
  return GREENWOOD_A * (10.0**(GREENWOOD_ALPHA * places) - GREENWOOD_K)


def default_high_hz(rate):
  return min(8000.0, 0.95 * rate / 2.0)


def vocode(x, rate, num_channels=16, low_hz=250.0, high_hz=None, envelope_cutoff_hz=160.0,
           carrier="noise", filter_order=4, seed=0):
  """Vocodes `[..., T]` signals sampled at `rate` Hz; returns `[..., T]` of the input's dtype.

  Args:
    x: waveforms, time last.
    rate: sample rate in Hz.
    num_channels: analysis/synthesis bands.
    low_hz, high_hz: outer band edges (high_hz None = min(8 kHz, 0.95 * Nyquist)).
    envelope_cutoff_hz: cut-off of the 2nd-order low-pass applied to the Hilbert envelope.
    carrier: "noise" (each band's own band-passed white noise) or "sine" (band centre tone).
    filter_order: Butterworth order of the band filters (doubled by forward-backward filtering).
    seed: seed of the noise carriers (same seed, same carriers).
  """
  x = np.asarray(x)
  if x.ndim < 1 or x.shape[-1] < 2:
    raise ValueError(f"expected waveforms [..., T] with T >= 2, got shape {x.shape}")
  if carrier not in CARRIERS:
    raise ValueError(f"unknown carrier {carrier!r}; use one of {CARRIERS}")
  high_hz = default_high_hz(rate) if high_hz is None else high_hz
  if high_hz >= rate / 2 or envelope_cutoff_hz >= rate / 2:
    raise ValueError(f"high_hz {high_hz} and envelope_cutoff_hz {envelope_cutoff_hz} must stay "
                     f"below Nyquist ({rate / 2} Hz); lower them or raise the rate")
  edges = greenwood_band_edges(num_channels, low_hz, high_hz)
  length = x.shape[-1]
  signal = x.astype(np.float64).reshape(-1, length)
  envelope_filter = scipy.signal.butter(2, envelope_cutoff_hz, "lowpass", fs=rate, output="sos")
  noise = np.random.default_rng(seed).standard_normal((num_channels, length))
  time = np.arange(length) / rate
  output = np.zeros_like(signal)
  for channel, (low, high) in enumerate(zip(edges[:-1], edges[1:])):
    band_filter = scipy.signal.butter(filter_order, [low, high], "bandpass", fs=rate,
                                      output="sos")
    band = scipy.signal.sosfiltfilt(band_filter, signal, axis=-1)
    envelope = np.abs(scipy.signal.hilbert(band, axis=-1))
    envelope = np.maximum(scipy.signal.sosfiltfilt(envelope_filter, envelope, axis=-1), 0.0)
    if carrier == "noise":
      modulated = scipy.signal.sosfiltfilt(
          band_filter, envelope * scipy.signal.sosfiltfilt(band_filter, noise[channel]), axis=-1)
    else:
      modulated = envelope * np.sin(2.0 * np.pi * np.sqrt(low * high) * time)
    band_rms = np.sqrt(np.mean(band**2, axis=-1, keepdims=True))
    modulated_rms = np.sqrt(np.mean(modulated**2, axis=-1, keepdims=True))
    output += modulated * band_rms / np.maximum(modulated_rms, 1e-12)
  dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
  return output.reshape(x.shape).astype(dtype)
