"""Files that survive kills, full disks and a second process: locks, atomic writes, appenders.

Every file a run writes is either

* written whole and atomically (`atomic_write`, `atomic_write_json`, `atomic_path`): the
  bytes go to a temporary file in the same folder, are fsynced, and the temporary file is
  renamed over the target (then the folder is fsynced), so a reader sees the old file or the
  new one, never a mix; or
* appended one row at a time (`JsonlAppender`, `CsvAppender`) with a flush (and fsync) per
  row. On open, a torn last row (a kill or a full disk in the middle of a write) is detected,
  dropped and named in a warning; a write that fails (disk full) is cut back to the last
  complete row before the error is raised, so the file is never left torn by this process.

`WorkdirLock` keeps a second process out of a workdir: a lock file holding the owner's pid,
host and purpose, locked with `fcntl.flock` (the kernel releases it when the owner dies, so
a lock left by a killed process is detected as stale and taken over, with a warning).

`check_checkpoint_identity` compares the run identity stored inside a checkpoint's metadata
with the current config's, so a resume under another config stops with one line.
"""

import contextlib
import csv
import errno
import fcntl
import io
import json
import logging
import os
import socket
import tempfile
import time
import zlib

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class WorkdirLocked(RuntimeError):
  """Another live process holds the lock; the message names it."""


class DiskFullError(OSError):
  """A write failed for lack of space (ENOSPC, EDQUOT) or a file-size limit (EFBIG)."""

  def __str__(self):
    return self.strerror


class TornFileError(ValueError):
  """A row that is not the last one is damaged: not a torn append, so not repaired silently."""


def is_disk_full(error: BaseException) -> bool:
  if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
    return True
  text = str(error)
  return "No space left on device" in text or "File too large" in text or "Disk quota" in text


def disk_full_message(error: BaseException, path: str | None = None) -> str:
  import re
  where = path or getattr(error, "filename", None)
  text = str(error)
  if isinstance(error, OSError) and error.errno:
    reason = os.strerror(error.errno)
  else:  # e.g. tensorstore's 'OUT_OF_RANGE: Error writing local file "...": ... File too large'
    found = re.search(r'file "([^"]+)"', text)
    where = where or (found.group(1) if found else None)
    reason = next((r for r in ("No space left on device", "File too large", "Disk quota exceeded")
                   if r in text), text)
  if where:  # the folder that exists (a checkpoint's temporary folder is removed on failure)
    folder = os.path.dirname(os.path.abspath(where))
    while folder and not os.path.isdir(folder):
      folder = os.path.dirname(folder)
  else:
    folder = None
  target = f" writing {where}" if where else ""
  folder = folder or "the output folder"
  return (f"disk full{target} ({reason}); free space on {folder} (or raise the file-size "
          "limit) and rerun: what was complete is kept (files, rows, checkpoints) and runs "
          "resume")


def _raise_disk_full(error: OSError, path: str):
  raise DiskFullError(error.errno, disk_full_message(error, path), path) from error


# ------------------------------------------------------------------------------ atomic writes

def fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory or ".", os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str, suffix: str | None = None):
  """Yields a temporary path next to `path`; when the block ends without an error the file
  written there is fsynced and renamed over `path`. On an error the temporary file is removed
  and `path` keeps its old content. `suffix` (default: path's extension) keeps the format
  guessable for writers such as soundfile."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1] if suffix is None else suffix
  fd, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp" + suffix,
                                   dir=directory)
  os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result is an ordinary file
  os.close(fd)
  try:
    yield temporary
    fd = os.open(temporary, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    os.replace(temporary, path)
    fsync_dir(directory)
  except OSError as e:
    _remove_quietly(temporary)
    if is_disk_full(e):
      _raise_disk_full(e, path)
    raise
  except BaseException:
    _remove_quietly(temporary)
    raise


def _remove_quietly(path: str) -> None:
  try:
    os.remove(path)
  except OSError:
    pass


def atomic_write(path: str, data: bytes | str) -> None:
  """Writes `data` to `path` atomically (temp + fsync + rename + fsync of the folder)."""
  payload = data.encode() if isinstance(data, str) else data
  with atomic_path(path) as temporary:
    with open(temporary, "wb") as f:
      f.write(payload)


def atomic_write_json(path: str, obj, **kwargs) -> None:
  kwargs.setdefault("indent", 1)
  atomic_write(path, json.dumps(obj, **kwargs) + "\n")


def read_json(path: str, what: str = "file"):
  """json.load with errors that name the file and the fix."""
  try:
    with open(path) as f:
      text = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} {path} does not exist") from None
  if not text.strip():
    raise ValueError(f"{what} {path} is empty (a write was cut short?); delete it or restore it")
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno}); "
                     "repair or delete it") from None


# ------------------------------------------------------------------------------ appenders

class _Appender:
  """Append-only file of newline-terminated rows; each row is written with one os.write loop,
  then flushed to the OS and (by default) fsynced. A failed write is cut back."""

  def __init__(self, path: str, fsync: bool = True):
    self.path = path
    self._fsync = fsync
    directory = os.path.dirname(os.path.abspath(path))
    try:
      os.makedirs(directory, exist_ok=True)
    except FileExistsError:
      raise NotADirectoryError(f"cannot write {path}: {directory} is a file, not a folder; "
                               "give an output folder that is not under a file") from None
    self._fd = None

  def _open_fd(self):
    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

  def _write_bytes(self, payload: bytes) -> None:
    if self._fd is None:
      raise ValueError(f"{self.path} is closed")
    start = os.lseek(self._fd, 0, os.SEEK_END)
    try:
      view = memoryview(payload)
      while view:
        written = os.write(self._fd, view)
        view = view[written:]
      if self._fsync:
        os.fsync(self._fd)
    except OSError as e:
      # Leave no torn row behind: cut the file back to where this row started.
      try:
        os.ftruncate(self._fd, start)
      except OSError:
        pass  # the row stays torn; the next open drops it with a warning
      if is_disk_full(e):
        _raise_disk_full(e, self.path)
      raise

  def close(self) -> None:
    if self._fd is not None:
      os.close(self._fd)
      self._fd = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def __del__(self):
    try:
      self.close()
    except Exception:  # interpreter shutdown
      pass


def _split_complete_lines(data: bytes):
  """(complete lines, the unterminated tail)."""
  *lines, tail = data.split(b"\n")
  return lines, tail


LOG = logging.getLogger("spatialsep_jax.io_safety")


def _warn(message: str) -> None:
  LOG.warning(message)


class JsonlAppender(_Appender):
  """JSON lines, one complete object per line; `.rows` holds what the file held on open.

  On open, a last line that is unterminated or not a JSON object is dropped (the file is cut
  back to the end of the last good line) with a warning naming the file; a bad line before the
  last raises `TornFileError` naming the line (that is damage, not a torn append).
  """

  def __init__(self, path: str, fsync: bool = True):
    super().__init__(path, fsync)
    self.rows = self._recover()
    self._open_fd()

  def _recover(self) -> list:
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    lines, tail = _split_complete_lines(data)
    rows, good_bytes = [], 0
    torn = None
    for number, line in enumerate(lines, 1):
      if not line.strip():
        good_bytes += len(line) + 1
        continue
      try:
        row = json.loads(line)
        if not isinstance(row, dict):
          raise ValueError("not an object")
      except ValueError:
        if number == len(lines) and not tail.strip():
          torn = line
          break
        raise TornFileError(
            f"{self.path} line {number} is not a JSON object (damaged in the middle, not a torn "
            "last row); repair or delete that line") from None
      rows.append(row)
      good_bytes += len(line) + 1
    if tail.strip():
      torn = tail
    if torn is not None or good_bytes != len(data):
      _cut(self.path, good_bytes)
      _warn(f"{self.path}: dropped a torn last row ({len(data) - good_bytes} bytes, "
            f"{torn[:40]!r}...) left by an interrupted write; {len(rows)} complete rows kept")
    return rows

  def append(self, row: dict) -> None:
    line = json.dumps(row, allow_nan=True) + "\n"
    self._write_bytes(line.encode())
    self.rows.append(row)

  def keep_only(self, predicate) -> int:
    """Rewrites the file atomically with the rows for which `predicate(row)` holds; returns
    how many were dropped (e.g. rows after the step a resumed run restarts from)."""
    kept = [r for r in self.rows if predicate(r)]
    dropped = len(self.rows) - len(kept)
    if dropped:
      self.close()
      atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
      self.rows = kept
      self._open_fd()
    return dropped


def read_jsonl(path: str) -> list:
  """The rows of a JSON-lines file ([] when missing), a torn last line ignored (not repaired)."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    lines, _ = _split_complete_lines(f.read())
  rows = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except ValueError:
      if number == len(lines):
        break
      raise TornFileError(f"{path} line {number} is not valid JSON; repair or delete that line") from None
  return rows


def _cut(path: str, size: int) -> None:
  with open(path, "r+b") as f:
    f.truncate(size)
    f.flush()
    os.fsync(f.fileno())


CHECK_COLUMN = "row_crc32"


def row_checksum(values) -> str:
  """crc32 (8 hex digits) of a row's values as written, joined by the unit separator."""
  return f"{zlib.crc32(chr(31).join(values).encode()) & 0xFFFFFFFF:08x}"


def _format(value) -> str:
  if isinstance(value, float):
    return repr(value)
  return str(value)


class CsvAppender(_Appender):
  """CSV rows with a trailing `row_crc32` column: the crc32 of the row's other fields.

  A row cut anywhere (inside a number, between fields, inside the checksum) fails the field
  count or the checksum, so on open it is dropped with a warning naming the file; a damaged
  row that is not the last raises `TornFileError`. `.rows` holds the recovered rows as dicts of
  strings, without the checksum column. Files written before the checksum existed (no such
  column in the header) are checked by field count only.
  """

  def __init__(self, path: str, fieldnames=None, fsync: bool = True):
    super().__init__(path, fsync)
    self.fieldnames = list(fieldnames) if fieldnames is not None else None
    self.rows = self._recover()
    self._open_fd()
    if self._header is None:
      if self.fieldnames is None:
        raise ValueError(f"{path} is new: give its fieldnames")
      self._header = self.fieldnames + [CHECK_COLUMN]
      self._checked = True
      self._write_bytes(_csv_line(self._header))

  def _recover(self) -> list:
    self._header, self._checked = None, True
    if not os.path.exists(self.path):
      return []
    with open(self.path, "rb") as f:
      data = f.read()
    lines, tail = _split_complete_lines(data)
    if tail:  # the last row has no newline: a torn append (a complete row always ends in \n)
      lines.append(tail)
    good_bytes, rows = 0, []
    for number, raw in enumerate(lines, 1):
      ends_in_newline = number <= len(lines) - (1 if tail else 0)
      size = len(raw) + (1 if ends_in_newline else 0)
      try:
        fields = next(csv.reader([raw.decode().rstrip("\r")]))
      except (StopIteration, UnicodeDecodeError, csv.Error):
        fields = None
      if number == 1:
        if not fields or not ends_in_newline:
          break  # a torn header: nothing was written after it
        self._header = fields
        self._checked = fields[-1] == CHECK_COLUMN
        names = fields[:-1] if self._checked else fields
        if self.fieldnames is not None and names != self.fieldnames:
          raise ValueError(
              f"{self.path} has the columns {names[:6]}... but this run writes "
              f"{self.fieldnames[:6]}...; move the old file away or use another output folder")
        self.fieldnames = names
        good_bytes += size
        continue
      problem = None
      if not ends_in_newline:
        problem = "unterminated"
      elif fields is None or len(fields) != len(self._header):
        problem = f"{0 if fields is None else len(fields)} of {len(self._header)} fields"
      elif self._checked and row_checksum(fields[:-1]) != fields[-1]:
        problem = "checksum mismatch"
      if problem:
        if number != len(lines):
          raise TornFileError(f"{self.path} row {number} is damaged ({problem}) and is not the "
                              "last row; repair or delete that row")
        _cut(self.path, good_bytes)
        _warn(f"{self.path}: dropped a torn last row ({problem}, {len(data) - good_bytes} "
              f"bytes) left by an interrupted write; {len(rows)} complete rows kept")
        break
      values = fields[:-1] if self._checked else fields
      rows.append(dict(zip(self.fieldnames, values)))
      good_bytes += size
    if self._header is None and data:
      _cut(self.path, 0)
      _warn(f"{self.path}: dropped a torn header ({len(data)} bytes)")
    return rows

  def append(self, row: dict) -> None:
    missing = [k for k in self.fieldnames if k not in row]
    extra = [k for k in row if k not in self.fieldnames]
    if missing or extra:
      raise ValueError(f"row for {self.path} does not match its columns (missing {missing}, "
                       f"extra {extra})")
    values = [_format(row[k]) for k in self.fieldnames]
    fields = values + [row_checksum(values)] if self._checked else values
    self._write_bytes(_csv_line(fields))
    self.rows.append(dict(zip(self.fieldnames, values)))


def recover_csv(path: str) -> list:
  """The complete rows of a CsvAppender file ([] when there is none), repairing a torn last row
  first (with a warning); for a resuming writer that learns its columns from its first row."""
  if not os.path.exists(path) or os.path.getsize(path) == 0:
    return []
  appender = CsvAppender(path)
  appender.close()
  return appender.rows


def read_csv(path: str) -> list:
  """The complete rows of a CsvAppender (or plain) CSV file as dicts of strings, without the
  checksum column and without repairing anything: a torn or damaged last row is left out."""
  if not os.path.exists(path):
    return []
  with open(path, newline="") as f:
    lines = f.read().split("\n")
  if len(lines) < 2:
    return []
  header = next(csv.reader([lines[0]]))
  checked = header[-1] == CHECK_COLUMN
  names = header[:-1] if checked else header
  complete, rows = lines[1:-1], []   # the text after the last newline is never a whole row
  for number, line in enumerate(complete, 2):
    fields = next(csv.reader([line.rstrip("\r")]), [])
    good = len(fields) == len(header) and (not checked or row_checksum(fields[:-1]) == fields[-1])
    if not good:
      if number == len(complete) + 1:
        break
      raise TornFileError(f"{path} row {number} is damaged; repair or delete that row")
    rows.append(dict(zip(names, fields[:-1] if checked else fields)))
  return rows


def _csv_line(fields) -> bytes:
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator="\n").writerow(fields)
  return buffer.getvalue().encode()


# ------------------------------------------------------------------------------ workdir lock

_HELD: dict = {}  # lock path -> [fd, count] for locks this process holds (re-entrant)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


class WorkdirLock:
  """`with WorkdirLock(workdir, "train"):` keeps other processes out of `workdir`.

  The lock file `<workdir>/.<purpose>.lock` holds {"pid", "host", "purpose", "since"} and is
  held with `fcntl.flock`, which the kernel drops when the owner exits or is killed: a lock
  file whose flock is free is stale and is taken over (a warning names its old owner). A
  second process gets `WorkdirLocked` with one line naming the holder. Re-entrant within one
  process (nested use in the same process is allowed).
  """

  def __init__(self, workdir: str, purpose: str = "train"):
    self.workdir = workdir
    self.purpose = purpose
    self.path = os.path.join(os.path.abspath(workdir), f".{purpose}.lock")

  def acquire(self) -> "WorkdirLock":
    if self.path in _HELD:
      _HELD[self.path][1] += 1
      return self
    try:
      os.makedirs(self.workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
      raise NotADirectoryError(f"workdir {self.workdir} is (or is under) a file, not a folder; "
                               "give another --workdir") from None
    for _ in range(10):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        raise WorkdirLocked(self._held_message(holder)) from None
      # The file may have been removed (a holder releasing) between open and flock.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      previous = _read_holder(fd)
      if previous:
        _warn(f"{self.path}: took over a stale lock of pid {previous.get('pid')} on "
              f"{previous.get('host')} ({previous.get('purpose')} since "
              f"{previous.get('since')}); that process is gone")
      record = {"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
      os.ftruncate(fd, 0)
      os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
      os.fsync(fd)
      _HELD[self.path] = [fd, 1]
      return self
    raise WorkdirLocked(f"{self.path} keeps changing owner; another process is starting in "
                        f"{self.workdir}: wait for it or use another --workdir")

  def _held_message(self, holder: dict) -> str:
    who = (f"pid {holder.get('pid')} on {holder.get('host')} ({holder.get('purpose')} since "
           f"{holder.get('since')})" if holder else "another process")
    same_host = holder.get("host") == socket.gethostname()
    hint = (" (that pid is not alive here: it may be on a shared filesystem of another host)"
            if holder and same_host and not _pid_alive(int(holder.get("pid", 0) or 0)) else "")
    return (f"{self.workdir} is in use by {who}{hint}; wait for it to finish or stop it, "
            "or use another --workdir")

  def release(self) -> None:
    entry = _HELD.get(self.path)
    if not entry:
      return
    entry[1] -= 1
    if entry[1] > 0:
      return
    fd = entry[0]
    del _HELD[self.path]
    try:
      os.ftruncate(fd, 0)  # an empty lock file is not reported as stale by the next owner
      os.fsync(fd)
    except OSError:
      pass
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _read_holder(fd: int) -> dict:
  try:
    data = os.pread(fd, 4096, 0)
    return json.loads(data) if data.strip() else {}
  except (OSError, ValueError):
    return {"pid": "?", "host": "?", "purpose": "unreadable lock file"}


# ------------------------------------------------------------------------------ run identity

def identity_meta(config, fingerprint: str) -> dict:
  """What to store in every checkpoint's metadata so a resume can check the run identity
  without config.json: the fingerprint, the config name and the flattened config values."""
  return {"config_fingerprint": fingerprint, "config_name": config.name,
          "config_values": _flatten(json.loads(config.to_json_best_effort()))}


def _flatten(tree, prefix="") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = value
  return out


def check_checkpoint_identity(meta: dict, config, fingerprint: str, where: str,
                              step: int | None = None) -> None:
  """Raises ValueError (one line) when the checkpoint metadata `meta` belongs to another run
  identity than `config`/`fingerprint`. `meta` without a fingerprint (made before identities
  were stored) is refused too, naming the fix."""
  saved = meta.get("config_fingerprint")
  at = f" (step {step})" if step is not None else ""
  if not saved:
    raise ValueError(f"the checkpoint in {where}{at} stores no config fingerprint, so resuming "
                     "it cannot be checked; use another --workdir (or delete that one)")
  if saved == fingerprint:
    return
  differences = []
  old = meta.get("config_values") or {}
  new = _flatten(json.loads(config.to_json_best_effort()))
  # Fields that shape the trained function first (logging cadence and budgets last).
  order = lambda k: (not k.startswith(("data.", "model.", "loss.", "optim.", "seed")), k)
  for key in sorted(set(old) | set(new), key=order):
    if old and _norm(old.get(key)) != _norm(new.get(key)):
      differences.append(f"{key}: {old.get(key)!r} there, {new.get(key)!r} now")
  detail = ("; it differs in " + ", ".join(differences[:4])
            + (f" and {len(differences) - 4} more" if len(differences) > 4 else "")
            ) if differences else ""
  raise ValueError(
      f"the checkpoint in {where}{at} was trained with another configuration "
      f"({meta.get('config_name', '?')}, fingerprint {saved}; this config's is {fingerprint})"
      f"{detail}; pass that run's --config or use another --workdir")


def _norm(value):
  return list(value) if isinstance(value, tuple) else value
