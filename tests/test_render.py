"""Render orchestration: byte identity across worker counts, resume after a kill."""

import functools
import json
import os

import numpy as np
import pytest

from data_pipeline import render, shards
from tests.test_shards import fake_example, manifest_extra

SPLITS = {"train": 7, "val": 3}
PER_SHARD = 2


def shard_bytes(shards_dir):
  manifest = shards.read_manifest(shards_dir)
  return {s["file"]: open(os.path.join(shards_dir, s["file"]), "rb").read()
          for split in manifest["splits"].values() for s in split}


def render_into(shards_dir, num_workers, config_hash="hash"):
  return render.render_dataset(str(shards_dir), SPLITS, PER_SHARD, functools.partial(fake_example),
                               manifest_extra(), config_hash, num_workers=num_workers,
                               progress=False)


@pytest.fixture(scope="module")
def clean_render(tmp_path_factory):
  shards_dir = tmp_path_factory.mktemp("clean")
  render_into(shards_dir, num_workers=0)
  return shards_dir


def test_render_writes_every_example_in_order(clean_render):
  manifest = shards.read_manifest(str(clean_render))
  assert manifest["counts"] == SPLITS
  assert shards.is_complete(manifest)
  spec = shards.spec_from_manifest(manifest)
  for split, n in SPLITS.items():
    _, source = shards.open_split(str(clean_render), split)
    assert len(source) == n
    for i in range(n):
      decoded = shards.decode_record(source[i], spec)
      assert int(decoded["example_id"]) == i
      assert shards.encode_record(fake_example(split, i), spec) == source[i]


def test_worker_count_does_not_change_bytes(clean_render, tmp_path):
  render_into(tmp_path, num_workers=2)
  assert shard_bytes(str(tmp_path)) == shard_bytes(str(clean_render))


def test_resume_after_kill_matches_clean_render(clean_render, tmp_path):
  render_into(tmp_path, num_workers=0)
  manifest = shards.read_manifest(str(tmp_path))
  train = manifest["splits"]["train"]
  # Simulate a kill: shard 1 never started, shard 2 half-written (partial file, not complete).
  os.remove(tmp_path / train[1]["file"])
  os.replace(tmp_path / train[2]["file"], str(tmp_path / train[2]["file"]) + shards.PARTIAL_SUFFIX)
  with open(str(tmp_path / train[2]["file"]) + shards.PARTIAL_SUFFIX, "r+b") as f:
    f.truncate(100)
  train[1]["complete"] = train[2]["complete"] = False
  shards.write_manifest(str(tmp_path), manifest)
  kept = tmp_path / train[0]["file"]
  kept_stat = os.stat(kept)

  render_into(tmp_path, num_workers=2)
  assert shard_bytes(str(tmp_path)) == shard_bytes(str(clean_render))
  assert os.stat(kept).st_mtime_ns == kept_stat.st_mtime_ns  # complete shards are not redone
  assert not list(tmp_path.glob("*/*" + shards.PARTIAL_SUFFIX))
  assert all(s["complete"] for s in json.loads((tmp_path / "manifest.json").read_text())
             ["splits"]["train"])


def test_render_refuses_directory_of_another_config(clean_render):
  with pytest.raises(ValueError, match="pick another data.shards_dir"):
    render_into(clean_render, num_workers=0, config_hash="other")


def test_smoke_render_keeps_rooms_disjoint(smoke_dataset):
  """The real renderer (eSpeak corpus, pyroomacoustics bank) on the :smoke config."""
  from spatialsep_jax.configs import ild_ipd
  from data_pipeline import rooms, summarize
  shards_dir, cache_dir = smoke_dataset
  config = ild_ipd.get_config("smoke")
  config.data.cache_dir = cache_dir
  bank = rooms.build_rir_bank(config, num_workers=1, progress=False)  # the render's cached bank
  manifest = shards.read_manifest(shards_dir)
  used = {}
  for split in ("train", "val", "test"):
    meta = summarize.split_metadata(shards_dir, split)
    used[split] = set(meta["room_index"].tolist())
    assert used[split] <= set(manifest["room_splits"][split])
    np.testing.assert_allclose(bank.rt60[meta["room_index"]], meta["rt60"])
  assert not used["train"] & used["val"] and not used["train"] & used["test"]
  assert not used["val"] & used["test"]


def test_quiet_crops_are_redrawn_then_refused(smoke_dataset):
  from spatialsep_jax.configs import ild_ipd
  from data_pipeline import dataset
  _, cache_dir = smoke_dataset
  config = ild_ipd.get_config("smoke")
  config.data.cache_dir = cache_dir
  record = dataset._make_example(config.to_json(), "val", 2)  # the corpus and bank are cached
  assert record["example_id"] == 2
  config.data.min_crop_level_db = 30.0  # louder than any crop can be
  with pytest.raises(ValueError, match="16 draws.*min_crop_level_db"):
    dataset._make_example(config.to_json(), "val", 2)


def test_render_redoes_damaged_shards_and_a_broken_manifest(clean_render, tmp_path):
  render_into(tmp_path, num_workers=0)
  manifest = shards.read_manifest(str(tmp_path))
  train = manifest["splits"]["train"]
  with open(tmp_path / train[0]["file"], "r+b") as f:  # truncated
    f.truncate(train[0]["size"] - 10)
  os.remove(tmp_path / train[1]["file"])                # deleted
  data = bytearray((tmp_path / train[2]["file"]).read_bytes())
  data[-100] ^= 0x01                                     # overwritten, same size
  (tmp_path / train[2]["file"]).write_bytes(bytes(data))
  kept = tmp_path / train[3]["file"]
  kept_mtime = os.stat(kept).st_mtime_ns
  render_into(tmp_path, num_workers=0)
  assert shard_bytes(str(tmp_path)) == shard_bytes(str(clean_render))
  assert os.stat(kept).st_mtime_ns == kept_mtime
  (tmp_path / "manifest.json").write_text('{"splits": ')  # torn manifest: everything redone
  render_into(tmp_path, num_workers=0)
  assert shard_bytes(str(tmp_path)) == shard_bytes(str(clean_render))
  shards.verify_shards(str(tmp_path), shards.read_manifest(str(tmp_path)), checksums=True)


def unknown_sex_example(split, index):
  record = fake_example(split, index)
  record["speaker_sex"] = np.array([-1, -1], np.int32)
  return record


def test_summary_says_unknown_for_speakers_of_unknown_sex(tmp_path):
  from spatialsep_jax.configs import base
  from data_pipeline import summarize
  render.render_dataset(str(tmp_path), {"train": 3}, 3, unknown_sex_example, manifest_extra(),
                        "h", num_workers=0, progress=False)
  text = summarize.summary_text(base.get_base_config("smoke"), str(tmp_path), plot=False)
  assert "sex unknown" in text and "same-sex" not in text and "rooms" in text
  sexes = np.array([[0, 0], [0, 1], [1, -1], [-1, -1], [1, 1]])
  assert summarize.sex_pairing(sexes) == "same-sex pairs 67% of 3 with known sexes"
  assert summarize.sex_pairing(sexes[[0, 1]]) == "same-sex pairs 50%"


def test_segment_seconds_zero_is_named(tmp_path):
  from spatialsep_jax.configs import base
  from data_pipeline import dataset
  config = base.get_base_config("smoke")
  config.data.segment_seconds = 0.0
  with pytest.raises(ValueError, match=r"data.segment_seconds=0.0 gives 0 samples.*> 0"):
    dataset.render(config, str(tmp_path), num_workers=0, progress=False)


def _file_size_limit(limit):
  def apply():
    import resource
    import signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
  return apply


def test_render_cli_full_disk_and_damaged_shards_are_one_line_and_repaired(smoke_dataset,
                                                                          tmp_path):
  import subprocess
  import sys
  from tests.conftest import ROOT
  shards_dir, cache_dir = smoke_dataset
  target = tmp_path / "shards"
  flags = ["--config=configs/mono.py:smoke", f"--config.data.cache_dir={cache_dir}",
           f"--config.data.shards_dir={target}"]
  command = "python launch/render.py " + " ".join(flags)
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  run = lambda *args, **kwargs: subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                                               timeout=300, capture_output=True, text=True,
                                               **kwargs)
  shard_size = shards.read_manifest(shards_dir)["splits"]["train"][0]["size"]
  full = run("launch/render.py", *flags, "--num_workers=1",
             preexec_fn=_file_size_limit(shard_size // 2))  # per file: no shard fits
  lines = full.stderr.strip().splitlines()
  assert full.returncode != 0 and lines[-1].startswith("error: disk full"), full.stderr[-2000:]
  assert ".partial" in lines[-1] and not any("Traceback" in line for line in lines)
  export = run("launch/export_mixture.py", *flags, "--split=train", "--index=0",
               f"--out={tmp_path / 'mix.wav'}")
  lines = export.stderr.strip().splitlines()
  assert export.returncode != 0 and len(lines) == 1, export.stderr[-2000:]
  assert "only partly rendered" in lines[0] and command in lines[0]
  again = run("launch/render.py", *flags, "--num_workers=1")  # resumes after the full disk
  assert again.returncode == 0, again.stderr[-2000:]
  assert shard_bytes(str(target)) == shard_bytes(shards_dir)  # mono and ild_ipd share their data
  # A shard damaged later is named with the command that rendered it (recorded by render.py).
  damaged = target / shards.read_manifest(str(target))["splits"]["train"][1]["file"]
  with open(damaged, "r+b") as f:
    f.truncate(1000)
  with pytest.raises(shards.ShardError, match="truncated") as error:
    shards.open_split(str(target), "train")
  assert str(damaged) in str(error.value) and command in str(error.value)



LOCK_HOLDER = """
import shutil, sys, time
sys.path.insert(0, sys.argv[3])
from spatialsep_jax import io_safety
with io_safety.WorkdirLock(sys.argv[1], "render"):
  print("held", flush=True)
  sys.stdin.readline()  # the test's go-ahead
  shutil.copytree(sys.argv[2], sys.argv[1], dirs_exist_ok=True)  # "finishes" the render
"""


def test_second_renderer_is_refused_and_an_implicit_render_waits(smoke_dataset, tmp_path, capsys):
  import subprocess
  import sys
  import threading
  from spatialsep_jax.configs import ild_ipd
  from data_pipeline import dataset
  from spatialsep_jax import io_safety
  from tests.conftest import ROOT
  shards_dir, cache_dir = smoke_dataset
  target = tmp_path / "shards"
  holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(target), shards_dir, ROOT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    config = ild_ipd.get_config("smoke")
    config.data.update(cache_dir=cache_dir, shards_dir=str(target))
    with pytest.raises(io_safety.WorkdirLocked, match=f"pid {holder.pid}"):
      dataset.render(config, str(target), num_workers=0, progress=False)
    # The implicit render of a training run waits, then finds the data the holder rendered.
    def release():
      holder.stdin.write("go\n")
      holder.stdin.flush()
    threading.Timer(1.0, release).start()
    assert dataset.ensure_dataset(config, progress=False) == str(target)
    assert f"waiting for the render lock: {target} is in use by pid {holder.pid}" in (
        capsys.readouterr().out)
    assert shard_bytes(str(target)) == shard_bytes(shards_dir)
  finally:
    if holder.poll() is None and holder.stdin:
      holder.stdin.close()  # a failed assertion before the go-ahead: EOF lets the holder finish
    holder.wait(timeout=60)


def announced_example(split, index):
  """fake_example that reports each example on stdout and then waits, so a test can kill its
  renderer at a known point."""
  import time
  print(f"{split} {index}", flush=True)
  time.sleep(0.05)
  return fake_example(split, index)


KILLED_RENDERER = """
import functools, sys
sys.path.insert(0, sys.argv[2])
from data_pipeline import render
from tests.test_render import PER_SHARD, SPLITS, announced_example
from tests.test_shards import manifest_extra
render.render_dataset(sys.argv[1], SPLITS, PER_SHARD, announced_example, manifest_extra(),
                      "hash", num_workers=0, progress=False)
"""


def test_sigkill_mid_shard_then_resume_is_byte_identical(clean_render, tmp_path):
  import signal
  import subprocess
  import sys
  from tests.conftest import ROOT
  child = subprocess.Popen([sys.executable, "-c", KILLED_RENDERER, str(tmp_path), ROOT],
                           stdout=subprocess.PIPE, text=True)
  try:
    for line in child.stdout:
      if line.strip() == "train 5":  # inside shard 2 of train: shards 0 and 1 are complete
        child.send_signal(signal.SIGKILL)
        break
  finally:
    child.wait(timeout=60)
  assert child.returncode == -signal.SIGKILL
  manifest = shards.read_manifest(str(tmp_path))
  assert [s["complete"] for s in manifest["splits"]["train"]] == [True, True, False, False]
  render_into(tmp_path, num_workers=0)
  assert shard_bytes(str(tmp_path)) == shard_bytes(str(clean_render))
  assert not list(tmp_path.glob("*/*" + shards.PARTIAL_SUFFIX))


def test_render_command_keeps_the_config_flags_of_any_verb():
  from data_pipeline import dataset
  train = ["launch/train.py", "--config=configs/mono.py:smoke", "--workdir=runs/x",
           "--config.data.num_rooms=6", "--config.data.corpus", "/data/my corpus"]
  assert dataset.render_command(train) == (
      "python launch/render.py --config=configs/mono.py:smoke --config.data.num_rooms=6 "
      "--config.data.corpus '/data/my corpus'")
  assert dataset.render_command(["launch/render.py", "--config=c.py", "--workdir=d"]) == (
      "python launch/render.py --config=c.py --workdir=d")
  assert dataset.render_command(["pytest", "-q"]) == shards.GENERIC_RENDER_COMMAND
