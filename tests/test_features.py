"""STFT / IPD / ILD against brute-force numpy and closed-form cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spatialsep_jax import features

N_FFT, HOP = 64, 10


def numpy_stft(x, n_fft, hop, n_frames, center_offset=0):
  """Explicit frames centred on l * hop + center_offset, zero outside, periodic Hann."""
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  out = np.zeros((x.shape[0], n_frames, n_fft // 2 + 1), np.complex128)
  for l in range(n_frames):
    frame = np.zeros((x.shape[0], n_fft))
    for n in range(n_fft):
      sample = l * hop + center_offset - n_fft // 2 + n
      if 0 <= sample < x.shape[1]:
        frame[:, n] = x[:, sample]
    out[:, l] = np.fft.rfft(frame * window, axis=-1)
  return out


def random_mixture(num_samples=203, channels=2, seed=0):
  return np.random.default_rng(seed).standard_normal((2, num_samples, channels)).astype(np.float32)


@pytest.mark.parametrize("center_offset", [0, 3])
def test_stft_matches_brute_force_numpy(center_offset):
  x = random_mixture()[..., 0]
  n_frames = features.encoder_num_frames(x.shape[1])
  got = features.stft(jnp.asarray(x), N_FFT, HOP, n_frames, center_offset)
  assert got.shape == (2, n_frames, N_FFT // 2 + 1) and got.dtype == jnp.complex64
  np.testing.assert_allclose(got, numpy_stft(x, N_FFT, HOP, n_frames, center_offset),
                             atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("num_samples", [80, 203, 1000, 1001, 32000])
def test_frame_count_equals_encoder_frames(num_samples):
  encoder_frames = jax.lax.conv_general_dilated(
      jnp.zeros((1, num_samples, 1)), jnp.zeros((21, 1, 4)), (10,), [(10, 10)],
      dimension_numbers=("NWC", "WIO", "NWC")).shape[1]
  assert features.encoder_num_frames(num_samples) == encoder_frames
  mixture = jnp.zeros((1, num_samples, 2))
  assert features.ipd(mixture, n_fft=N_FFT, hop=HOP).shape[1] == encoder_frames


def test_stft_frame_is_centred_on_encoder_frame():
  num_samples, frame = 400, 17
  impulse = np.zeros((1, num_samples), np.float32)
  impulse[0, HOP * frame] = 1.0
  # Encoder frame l with kernel 21 / padding 10: its centre tap (10) reads sample 10 l.
  centre_tap = jnp.zeros((21, 1, 1)).at[10, 0, 0].set(1.0)
  encoded = jax.lax.conv_general_dilated(
      jnp.asarray(impulse)[..., None], centre_tap, (10,), [(10, 10)],
      dimension_numbers=("NWC", "WIO", "NWC"))[0, :, 0]
  assert int(jnp.argmax(encoded)) == frame
  spectrum = features.stft(jnp.asarray(impulse), N_FFT, HOP, features.encoder_num_frames(num_samples))
  # The Hann window peaks (value 1) at index n_fft // 2, the frame centre.
  np.testing.assert_allclose(np.abs(spectrum[0, frame]), 1.0, atol=1e-6)
  assert float(jnp.abs(spectrum[0, frame - 4]).max()) < 1.0


def test_ipd_ild_match_numpy():
  mixture = random_mixture(channels=3, seed=1)
  n_frames = features.encoder_num_frames(mixture.shape[1])
  spec_i = numpy_stft(mixture[..., 2], N_FFT, HOP, n_frames)
  spec_j = numpy_stft(mixture[..., 0], N_FFT, HOP, n_frames)
  want_ipd = np.angle(spec_i * np.conj(spec_j))
  got_ipd = features.ipd(jnp.asarray(mixture), (2, 0), N_FFT, HOP, n_frames)
  # Compare phases on the circle (a wrap at +-pi is not an error).
  np.testing.assert_allclose(np.exp(1j * np.asarray(got_ipd)), np.exp(1j * want_ipd), atol=1e-3)
  want_ild = np.clip(20 * np.log10((np.abs(spec_i) + 1e-8) / (np.abs(spec_j) + 1e-8)), -12, 12)
  got_ild = features.ild(jnp.asarray(mixture), (2, 0), N_FFT, HOP, n_frames, ild_clip_db=12.0)
  np.testing.assert_allclose(got_ild, want_ild, atol=1e-3)
  cos_sin = features.ipd_cos_sin(jnp.asarray(mixture), (2, 0), N_FFT, HOP, n_frames)
  num_bins = N_FFT // 2 + 1
  assert cos_sin.shape == (2, n_frames, 2 * num_bins)
  np.testing.assert_allclose(cos_sin[..., :num_bins], np.cos(want_ipd), atol=1e-3)
  np.testing.assert_allclose(cos_sin[..., num_bins:], np.sin(want_ipd), atol=1e-3)


def test_scaled_copy_has_zero_ipd_and_constant_ild():
  left = random_mixture(channels=1, seed=2)
  mixture = jnp.asarray(np.concatenate([left, 0.5 * left], axis=-1))
  np.testing.assert_allclose(features.ipd(mixture, n_fft=N_FFT, hop=HOP), 0.0, atol=1e-5)
  np.testing.assert_allclose(features.ild(mixture, n_fft=N_FFT, hop=HOP),
                             20 * np.log10(2.0), atol=1e-3)
  silent_right = mixture.at[..., 1].set(0.0)
  assert float(features.ild(silent_right, n_fft=N_FFT, hop=HOP, ild_clip_db=30.0).min()) == 30.0


def test_spatial_features_concatenates_kinds_and_jits():
  mixture = jnp.asarray(random_mixture(seed=3))
  n_frames = features.encoder_num_frames(mixture.shape[1])
  kinds = ("ipd", "ild", "ipd_cossin")
  compute = jax.jit(lambda m: features.spatial_features(m, kinds, (0, 1), N_FFT, HOP, n_frames))
  stacked = compute(mixture)
  num_bins = N_FFT // 2 + 1
  assert stacked.shape == (2, n_frames, 4 * num_bins) and stacked.dtype == jnp.float32
  np.testing.assert_allclose(stacked[..., :num_bins],
                             features.ipd(mixture, (0, 1), N_FFT, HOP, n_frames), atol=1e-5)
  np.testing.assert_allclose(stacked[..., num_bins:2 * num_bins],
                             features.ild(mixture, (0, 1), N_FFT, HOP, n_frames), atol=1e-4)
  np.testing.assert_allclose(stacked[..., 2 * num_bins:],
                             features.ipd_cos_sin(mixture, (0, 1), N_FFT, HOP, n_frames), atol=1e-5)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="unknown spatial feature"):
    features.spatial_features(jnp.zeros((1, 100, 2)), ("itd",), n_fft=N_FFT)
  with pytest.raises(ValueError, match="feature_pair"):
    features.ipd(jnp.zeros((1, 100, 2)), (0, 2), n_fft=N_FFT)


def test_feature_scale_diagnostic_shares_sum_to_one(smoke_dataset):
  """launch/feature_scale.py: per-part variance shares of the joint norm add up to 100%."""
  import re
  import subprocess
  import sys
  from tests.conftest import ROOT
  shards, cache = smoke_dataset
  out = subprocess.run(
      [sys.executable, f"{ROOT}/launch/feature_scale.py", "--config=configs/ild_ipd.py:smoke",
       f"--config.data.shards_dir={shards}", f"--config.data.cache_dir={cache}", "--batches=1"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  shares = [float(x) for x in re.findall(r"share of variance\s+([\d.]+)%", out.stdout)]
  assert len(shares) == 3 and abs(sum(shares) - 100.0) < 0.1
  mono = subprocess.run([sys.executable, f"{ROOT}/launch/feature_scale.py",
                         "--config=configs/mono.py:smoke"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert mono.returncode == 2 and "concatenated features" in mono.stderr


def test_cossin_is_continuous_where_the_wrapped_angle_jumps():
  """A right channel delayed by a fraction of a sample: at the bin where the true phase
  difference crosses pi the raw angle jumps by ~2 pi between neighbouring bins, while
  (cos, sin) moves by a small step (the representation question of issue 13)."""
  n_fft, hop, num_samples = 64, 10, 640
  rng = np.random.default_rng(3)
  left = rng.standard_normal(num_samples)
  delay = 1.37  # samples: the phase difference 2 pi f delay / n_fft crosses pi below Nyquist
  spectrum = np.fft.rfft(left)
  freqs = np.arange(spectrum.size) / num_samples
  right = np.fft.irfft(spectrum * np.exp(-2j * np.pi * freqs * delay), num_samples)
  mixture = jnp.asarray(np.stack([left, right], -1)[None], jnp.float32)
  middle = num_samples // hop // 2  # a frame far from the zero-padded edges
  angle = np.asarray(features.ipd(mixture, n_fft=n_fft, hop=hop))[0, middle]        # [F]
  cossin = np.asarray(features.ipd_cos_sin(mixture, n_fft=n_fft, hop=hop))[0]        # [L, 2F]
  num_bins = n_fft // 2 + 1
  np.testing.assert_allclose(cossin[:, :num_bins], np.cos(np.asarray(
      features.ipd(mixture, n_fft=n_fft, hop=hop))[0]), atol=1e-5)
  vectors = np.stack([cossin[middle, :num_bins], cossin[middle, num_bins:]], -1)
  # Expected phase: angle(X_l conj(X_r)) = +2 pi k delay / n_fft, wrapping at k = n_fft / (2 delay).
  expected = 2 * np.pi * np.arange(num_bins) * delay / n_fft
  wrap_bin = int(np.ceil(n_fft / (2 * delay)))
  assert 2 < wrap_bin < num_bins - 2
  jumps = np.abs(np.diff(angle))
  assert jumps[wrap_bin - 1] > 5.0        # the wrapped angle jumps by ~2 pi - step there
  assert np.all(np.delete(jumps, wrap_bin - 1)[1:-1] < 1.0)
  steps = np.linalg.norm(np.diff(vectors, axis=0), axis=-1)
  # At the wrap, cos/sin moves like anywhere else (the true step is 2 pi delay / n_fft ~ 0.13).
  assert steps[wrap_bin - 1] < 0.6 and np.median(steps) < 0.3
  # and reads the delay's phase back (one frame of noise: per-bin estimates scatter a little).
  error = np.angle(vectors[:, 0] + 1j * vectors[:, 1])[1:wrap_bin] - expected[1:wrap_bin]
  assert np.median(np.abs(error)) < 0.15
