"""SOFA files through sofar (data_pipeline.measured): files the tests write with sofar itself in
three impulse-response conventions, each response checked against numpy/scipy references for
its delay, its own sampling rate and the source direction in the listener's head frame."""

import json

import numpy as np
import pytest
import sofar
from scipy import signal

from data_pipeline import measured

RATE = 8000


def _write_sofa(path, convention, **variables):
  sofa = sofar.Sofa(convention, mandatory=True)
  if hasattr(sofa, "GLOBAL_RoomType"):
    sofa.GLOBAL_RoomType = "free field"
  for name, value in variables.items():
    setattr(sofa, name, value)
  sofar.write_sofa(str(path), sofa)
  return path


def _delayed(impulse, delay):
  return np.concatenate([np.zeros(delay), impulse])


def test_simple_free_field_hrir_delays_elevations_and_rate(tmp_path):
  rng = np.random.default_rng(0)
  impulses = rng.standard_normal((4, 2, 96))
  positions = np.array([[0, 0, 1.5], [90, 0, 1.2], [90, 30, 1.5], [-45, 0, 1.5]], float)
  delays = np.array([[2.0, 7.0]])  # per receiver, every measurement
  path = _write_sofa(tmp_path / "studio.sofa", "SimpleFreeFieldHRIR", Data_IR=impulses,
                     SourcePosition=positions, Data_SamplingRate=16000, Data_Delay=delays)
  (tmp_path / "studio.json").write_text(json.dumps({"channels": ["L_tmic", "R_tmic"]}))
  bank = measured.load_measured_bank(path, RATE, 0.01)
  np.testing.assert_array_equal(bank.azimuths_deg, [-45, 0, 90])
  np.testing.assert_allclose(bank.distance_m[0], [1.5, 1.5, 1.2])   # 90 deg: elevation 0 wins
  for receiver, channel in enumerate((2, 5)):                         # L_tmic, R_tmic
    expected = signal.resample_poly(_delayed(impulses[1, receiver], int(delays[0, receiver])),
                                    1, 2)[:80]
    np.testing.assert_allclose(bank.reverberant[0, 2, :len(expected), channel], expected,
                               atol=1e-5)


def test_single_room_srir_listener_orientation_and_per_measurement_rates(tmp_path):
  rng = np.random.default_rng(1)
  impulses = rng.standard_normal((2, 2, 64))
  # The listener at (2, 1, 1.5) faces +y, then +x: the first source is ahead, the second left.
  path = _write_sofa(
      tmp_path / "hall.sofa", "SingleRoomSRIR", Data_IR=impulses,
      Data_SamplingRate=np.array([16000.0, 32000.0]), Data_Delay=np.array([[3.0, 0.0], [0.0, 5.0]]),
      ListenerPosition=np.array([[2.0, 1.0, 1.5]] * 2), ListenerUp=np.array([[0.0, 0, 1]] * 2),
      ListenerView=np.array([[0.0, 1, 0], [1.0, 0, 0]]),
      SourcePosition=np.array([[2.0, 3.0, 1.5], [2.0, 2.0, 1.5]]))
  (tmp_path / "hall.json").write_text(json.dumps({"channels": ["L_tmic", "R_tmic"]}))
  bank = measured.load_measured_bank(path, RATE, 0.02)
  assert bank.channel_names == ("L_tmic", "R_tmic")
  np.testing.assert_array_equal(bank.azimuths_deg, [0, 90])
  np.testing.assert_allclose(bank.distance_m[0], [2.0, 1.0])
  left, right = 2, 5  # L_tmic, R_tmic in the array's channel order
  for azimuth, measurement, down in ((0, 0, 2), (1, 1, 4)):
    for receiver, channel in enumerate((left, right)):
      delay = int([[3, 0], [0, 5]][measurement][receiver])
      expected = signal.resample_poly(_delayed(impulses[measurement, receiver], delay), 1, down)
      np.testing.assert_allclose(bank.reverberant[0, azimuth, :len(expected), channel], expected,
                                 atol=1e-5)
  assert not np.any(bank.reverberant[..., 0])


def test_single_room_mimo_srir_every_emitter_is_a_source(tmp_path):
  impulses = np.random.default_rng(2).standard_normal((3, 6, 40, 2))   # [M, R, N, E]
  path = _write_sofa(
      tmp_path / "array.sofa", "SingleRoomMIMOSRIR", Data_IR=impulses, Data_SamplingRate=8000,
      Data_Delay=np.zeros((3, 6, 2)), SourcePosition=np.zeros((3, 3)),
      EmitterPosition=np.array([[30.0, 0, 2], [-60.0, 0, 2]])[:, :, None],   # spherical
      ListenerPosition=np.zeros((3, 3)), ListenerUp=np.array([[0.0, 0, 1]] * 3),
      ListenerView=np.array([[1.0, 0, 0], [0.0, 1, 0], [0.0, -1, 0]]))
  bank = measured.load_measured_bank(path, RATE, 0.005)
  # Head-frame azimuth = emitter azimuth - view azimuth (0, 90, -90); repeats keep the first.
  np.testing.assert_allclose(bank.azimuths_deg, [-150, -60, 30, 120])
  for azimuth, (emitter, measurement) in enumerate(((1, 1), (0, 1), (0, 0), (0, 2))):
    np.testing.assert_allclose(bank.reverberant[0, azimuth],
                               impulses[measurement, :, :, emitter].T, atol=1e-6)
  np.testing.assert_allclose(bank.distance_m, 2.0)


def test_unsupported_or_invalid_files_are_named_in_one_line(tmp_path):
  transfer = _write_sofa(tmp_path / "tf.sofa", "SimpleFreeFieldHRTF",
                         Data_Real=np.ones((1, 2, 5)), Data_Imag=np.zeros((1, 2, 5)),
                         N=np.linspace(0, 4000, 5))
  with pytest.raises(ValueError, match=r"SimpleFreeFieldHRTF \(DataType TF\) holds no impulse "
                                       r"responses.*SingleRoomSRIR") as error:
    measured.load_measured_bank(transfer, RATE, 0.01)
  assert "\n" not in str(error.value)
  broken = tmp_path / "broken.sofa"
  broken.write_bytes(b"not a netCDF file")
  with pytest.raises(ValueError, match="broken.sofa: not a valid SOFA file"):
    measured.load_measured_bank(broken, RATE, 0.01)
  fractional = _write_sofa(tmp_path / "frac.sofa", "SimpleFreeFieldHRIR",
                           Data_IR=np.ones((1, 2, 8)), SourcePosition=np.array([[0.0, 0, 1]]),
                           Data_SamplingRate=8000, Data_Delay=np.full((1, 2), 0.5))
  with pytest.raises(ValueError, match="fractional or negative sample delays"):
    measured.load_measured_bank(fractional, RATE, 0.01)
