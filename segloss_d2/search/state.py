"""Durable, resumable state of a search in one output directory.

Files (only these are owned; anything else in the directory, e.g. detectron2's ``log.txt`` and
``config.yaml``, is ignored)::

    meta.json       {"format_version", "fingerprint", "config", "runs", "records"}; written by
                    create(), replaced atomically by each resume() to append its entry to
                    "runs" ({"started", "trials_before", "runtime"}: what ran the search when)
                    and by record() ("records": measurements a resume reuses)
    trials.jsonl    append-only, one JSON record per finished trial, fsync'd per record
    controller.pt   latest controller checkpoint, replaced atomically (temp file + os.replace)
    search.lock     exists while a process holds the directory (:mod:`.lock`)

A trial record is a JSON object with at least::

    iteration (int), index (int), theta (list of D floats), control_points (any JSON value),
    reward (finite float), metrics (dict), seconds (float or null),
    status ("ok" | "diverged")

and possibly more JSON-able keys added by the caller; the search adds ``stage`` ("search", or
"selection" for the re-evaluations after the last iteration, logged as iteration ``ITERATIONS``),
``proxy_seed`` and ``proxy_iters`` (how long the proxy trained). The controller checkpoint is a
dict::

    format_version, fingerprint, iteration (int: completed controller updates),
    controller (PPOController.state_dict()), samples (float32 (N, D) Tensor of the candidates of
    iteration ``iteration``, or of the selection stage once ``iteration`` is the last; None when
    that stage has not been sampled yet), samples_per_iter (int M of the search iterations, or
    None before the first sample)

A kill at any moment loses at most the trials in flight: a torn last line of ``trials.jsonl``
(necessarily a trial of the iteration in progress, since an iteration is checkpointed as complete
only after all its lines are on disk) is dropped on resume with a warning, and ``controller.pt``
is either the old or the new checkpoint. ``resume`` checks everything before it writes anything
and raises on the first problem: fingerprint, readable files, trials consistent with the
checkpoint, and every completed iteration holding all its ``M`` trials (a trial of a completed
iteration cannot be re-created, so a damaged or missing line there is refused, never dropped).

Only one process may hold a directory: ``create`` and ``resume`` take an exclusive lock
(:class:`~segloss_d2.search.lock.DirectoryLock`) before reading anything and :meth:`close` (or
the end of a ``with`` block) releases it; a second process is refused at once with
:class:`~segloss_d2.search.lock.SearchLockedError` naming the holder.

The numbers of a search are reproducible on one machine, backend and thread count, not across
them (float round-off differs and the controller amplifies it). The caller passes a ``runtime``
dict describing what runs the search (backend, threads, device, ...); ``resume`` logs a warning
naming what changed, and ``meta.json``'s ``runs`` keeps the history.
"""
import datetime
import hashlib
import json
import logging
import math
import os
import weakref
from numbers import Real
from typing import Any, Dict, List, Mapping, Optional

import torch

from .lock import DirectoryLock, SearchLockedError

__all__ = ["SearchState", "SearchLockedError", "config_fingerprint", "config_differences",
           "validate_record", "STATUSES", "trial_order_key", "search_stage_trials"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
META = "meta.json"
TRIALS = "trials.jsonl"
CONTROLLER = "controller.pt"
STATUSES = ("ok", "diverged")
_REQUIRED = ("iteration", "index", "theta", "control_points", "reward", "metrics", "seconds",
             "status")


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of ``config`` as canonical JSON (sorted keys). ``config`` must be
    JSON-able (TypeError otherwise); tuples and lists hash alike."""
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping, got {type(config).__name__}")
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_differences(saved: Any, current: Any, prefix: str = "") -> List[str]:
    """The leaf keys where two JSON-like configs differ, as ``"A.B.C: saved -> current"`` lines
    (dotted paths as in a detectron2 config; a key missing on one side shows as ``<absent>``)."""
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        out = []
        for key in sorted(set(saved) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved or key not in current:
                a = saved.get(key, "<absent>")
                b = current.get(key, "<absent>")
                out.append(f"{path}: {a!r} -> {b!r}")
            else:
                out.extend(config_differences(saved[key], current[key], path))
        return out
    return [] if saved == current else [f"{prefix or '<config>'}: {saved!r} -> {current!r}"]


def _json_default(obj):
    if hasattr(obj, "tolist"):  # numpy scalars/arrays, torch tensors
        return obj.tolist()
    raise TypeError(f"trial record value {obj!r} of type {type(obj).__name__} is not JSON-able")


def _fsync_dir(path: str) -> None:
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: str, write) -> None:
    """Write via ``write(file_object)`` into a temp file next to ``path``, fsync, os.replace."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path) or ".")


def validate_record(record: Mapping[str, Any]) -> None:
    """Raise ValueError if ``record`` is not a well-formed trial record (see module docstring)."""
    if not isinstance(record, Mapping):
        raise ValueError(f"a trial record must be a dict, got {type(record).__name__}")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ValueError(f"trial record lacks keys {missing}: {record!r}")
    for key in ("iteration", "index"):
        v = record[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"trial record {key} must be an int >= 0, got {v!r}")
    reward = record["reward"]
    if isinstance(reward, bool) or not isinstance(reward, Real) or not math.isfinite(reward):
        raise ValueError(f"trial record reward must be a finite number, got {reward!r}")
    if record["status"] not in STATUSES:
        raise ValueError(f"trial record status must be one of {STATUSES}, got {record['status']!r}")
    if not isinstance(record["metrics"], Mapping):
        raise ValueError(f"trial record metrics must be a dict, got {record['metrics']!r}")
    if not isinstance(record["theta"], (list, tuple)):
        raise ValueError(f"trial record theta must be a list, got {record['theta']!r}")


def trial_order_key(record: Mapping[str, Any]):
    """Sort key of a trial record, larger = better: proxies trained longer first (successive
    halving stops the worse half early, and a shorter training's reward is not comparable), then
    the reward, then the later trial."""
    return (record.get("proxy_iters") or 0, record["reward"], record["iteration"],
            record["index"])


def search_stage_trials(trials, ok_only: bool = True) -> List[Dict[str, Any]]:
    """The trials the search sampled (``stage`` "search", the default), without the
    re-evaluations of the selection stage (``stage`` "selection"); only "ok" ones by default."""
    return [r for r in trials if r.get("stage", "search") == "search"
            and (r["status"] == "ok" or not ok_only)]


class SearchState:
    """Trial log and controller checkpoints of one search in ``output_dir``.

    Do not construct directly: use :meth:`create` for a new search or :meth:`resume` to continue,
    and :meth:`close` it (or use it as a context manager) to release the directory's lock.
    The fingerprint is :func:`config_fingerprint` of the search config the caller passes, which
    should hold everything that determines the search's results (target metric, data, proxy
    schedule, controller hyper-parameters, seed, iterations, samples per iteration, ...) and
    nothing that does not (backend, number of workers, output paths).
    """

    def __init__(self, output_dir: str, fingerprint: str, trials: List[Dict], checkpoint,
                 lock: DirectoryLock, runtime_changes: Optional[List[str]] = None,
                 meta: Optional[Dict[str, Any]] = None):
        self.output_dir = output_dir
        self._meta = meta
        self.fingerprint = fingerprint
        self._trials = trials
        self._done = {(r["iteration"], r["index"]) for r in trials}
        self._checkpoint = checkpoint
        self._lock = lock
        self._release = weakref.finalize(self, lock.release)  # also when garbage collected
        #: Lines "key: before -> now" of the runtime that changed since the search started
        #: (empty for a new search or an unchanged runtime).
        self.runtime_changes = list(runtime_changes or [])

    def _path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def close(self) -> None:
        """Release the directory's lock (idempotent). The state must not be written afterwards."""
        self._release()

    def __enter__(self) -> "SearchState":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._lock.released:
            raise RuntimeError(f"the search state of {self.output_dir} was closed")

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _run_entry(trials_before: int, runtime: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        return {"started": datetime.datetime.now().isoformat(timespec="seconds"),
                "trials_before": trials_before,
                "runtime": json.loads(json.dumps(dict(runtime or {}), default=str))}

    @classmethod
    def create(
        cls, output_dir: str, config: Mapping[str, Any], overwrite: bool = False,
        runtime: Optional[Mapping[str, Any]] = None,
    ) -> "SearchState":
        """Start a new search in ``output_dir`` (created if missing).

        Args:
            output_dir (str): the search directory.
            config (dict): JSON-able search config; its fingerprint is checked on resume.
            overwrite (bool): delete the search state files found in ``output_dir`` (only those)
                instead of refusing to start.
            runtime (dict, optional): JSON-able description of what runs the search (backend,
                threads, device, ...), recorded in ``meta.json`` and compared on resume.

        Raises:
            SearchLockedError: another process holds the directory.
            FileExistsError: the directory already holds search state (``meta.json``,
                ``trials.jsonl`` or ``controller.pt``) and ``overwrite`` is False; nothing is
                touched then.
        """
        fingerprint = config_fingerprint(config)
        os.makedirs(output_dir, exist_ok=True)
        lock = DirectoryLock(output_dir)
        try:
            ours = [n for n in (META, TRIALS, CONTROLLER, CONTROLLER + ".tmp", META + ".tmp")
                    if os.path.exists(os.path.join(output_dir, n))]
            if ours and not overwrite:
                raise FileExistsError(
                    f"{output_dir} already holds search state ({', '.join(ours)}); resume it "
                    "(tools/search_net.py --resume), start over in it (tools/search_net.py "
                    "--overwrite deletes that search's state and results), or choose another "
                    "output directory"
                )
            for name in ours:
                os.remove(os.path.join(output_dir, name))
            meta = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                    "config": json.loads(json.dumps(config)),
                    "runs": [cls._run_entry(0, runtime)]}
            _atomic_write(os.path.join(output_dir, TRIALS), lambda f: None)
            _atomic_write(
                os.path.join(output_dir, META),
                lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")),
            )
        except BaseException:
            lock.release()
            raise
        return cls(output_dir, fingerprint, [], None, lock, meta=meta)

    @classmethod
    def resume(cls, output_dir: str, config: Mapping[str, Any],
               runtime: Optional[Mapping[str, Any]] = None) -> "SearchState":
        """Open the search in ``output_dir`` to continue it.

        Args:
            output_dir, config, runtime: as for :meth:`create`. A ``runtime`` that differs from
                the one of the search's first run is logged as a warning (the numbers will not
                equal an uninterrupted run's) and listed in :attr:`runtime_changes`.

        Raises:
            FileNotFoundError: no ``meta.json`` in ``output_dir`` (nothing to resume).
            SearchLockedError: another process holds the directory.
            ValueError: the directory belongs to a search with another config (the message lists
                the differing keys with both values), or a file is corrupt or inconsistent
                (unreadable meta or checkpoint, a bad trial line other than a torn last line of
                the iteration in progress, trials that do not match the checkpoint, a completed
                iteration missing trials). Nothing is written in these cases.

        The only repairs done (after all checks passed) are cutting a torn last line off
        ``trials.jsonl`` (with a warning: that trial runs again) or ending a complete last record
        with its missing newline, and appending this run to ``meta.json``'s ``runs``.
        """
        fingerprint = config_fingerprint(config)
        meta_path = os.path.join(output_dir, META)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"cannot resume: {output_dir} holds no search state ({META} not found)"
            )
        lock = DirectoryLock(output_dir)
        try:
            state = cls._open(output_dir, config, fingerprint, runtime, lock)
        except BaseException:
            lock.release()
            raise
        return state

    @classmethod
    def _open(cls, output_dir, config, fingerprint, runtime, lock) -> "SearchState":
        meta_path = os.path.join(output_dir, META)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            saved_fp = meta["fingerprint"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot resume: {meta_path} is corrupt ({e})") from e
        if saved_fp != fingerprint:
            diff = config_differences(meta.get("config") or {}, json.loads(json.dumps(config)))
            raise ValueError(
                f"cannot resume: {output_dir} belongs to another search (config fingerprint "
                f"{saved_fp[:12]} != {fingerprint[:12]}; differing keys, saved -> now: "
                f"{'; '.join(diff) or 'none (the saved config is damaged)'}). Use the original "
                "config, another output directory, or start over in this one "
                "(tools/search_net.py --overwrite)."
            )
        trials_path = os.path.join(output_dir, TRIALS)
        trials, tail = cls._read_trials(trials_path)
        checkpoint = cls._read_checkpoint(os.path.join(output_dir, CONTROLLER), fingerprint)
        cls._check_consistent(output_dir, trials, checkpoint, tail)
        runs = meta.get("runs") if isinstance(meta.get("runs"), list) else []
        entry = cls._run_entry(len(trials), runtime)
        changes = []
        if runs and isinstance(runs[0], Mapping) and runtime is not None:
            changes = config_differences(runs[0].get("runtime") or {}, entry["runtime"])
        # All checks passed: repair and record.
        if tail.kind == "torn":
            logger.warning(
                "%s: dropped its torn last line (%d bytes, a trial interrupted while it was "
                "logged); that trial runs again", trials_path, tail.size)
            os.truncate(trials_path, tail.offset)
        elif tail.kind == "unterminated":
            with open(trials_path, "ab") as f:
                f.write(b"\n")
                f.flush()
                os.fsync(f.fileno())
        if changes:
            logger.warning(
                "resuming %s with another runtime than the one it started with (%s): the "
                "trials from now on will not be bit-identical to an uninterrupted run's (float "
                "round-off differs and the controller amplifies it). Resume with the original "
                "backend and thread count to reproduce it.", output_dir, "; ".join(changes))
        meta["runs"] = runs + [entry]
        _atomic_write(meta_path, lambda f: f.write(
            json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")))
        return cls(output_dir, fingerprint, trials, checkpoint, lock, changes, meta=meta)

    class _Tail:
        """What follows the last newline of trials.jsonl: nothing ("clean"), a complete record
        without its newline ("unterminated", kept) or a torn line ("torn", dropped)."""

        def __init__(self, kind: str, offset: int, size: int, line: int, record=None,
                     error: str = ""):
            self.kind, self.offset, self.size, self.line = kind, offset, size, line
            self.record, self.error = record, error

    @classmethod
    def _read_trials(cls, path: str):
        """Parse trials.jsonl; returns (records, _Tail)."""
        if not os.path.isfile(path):
            raise ValueError(f"cannot resume: {path} is missing")
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        # The last element is b"" if the file ends with a newline, else a torn line.
        last = lines.pop()
        records, seen = [], set()

        def parse(number, line):
            record = json.loads(line.decode("utf-8"))
            validate_record(record)
            key = (record["iteration"], record["index"])
            if key in seen:
                raise ValueError(f"cannot resume: {path} line {number} repeats trial {key}")
            seen.add(key)
            return record

        for number, line in enumerate(lines, start=1):
            try:
                records.append(parse(number, line))
            except ValueError as e:
                if str(e).startswith("cannot resume"):
                    raise
                raise ValueError(f"cannot resume: {path} line {number} is corrupt ({e})") from e
        offset, number = len(data) - len(last), len(lines) + 1
        if not last:
            return records, cls._Tail("clean", offset, 0, number)
        try:
            record = parse(number, last)
        except ValueError as e:
            if str(e).startswith("cannot resume"):
                raise
            return records, cls._Tail("torn", offset, len(last), number, error=str(e))
        records.append(record)
        return records, cls._Tail("unterminated", offset, len(last), number, record)

    @staticmethod
    def _read_checkpoint(path: str, fingerprint: str):
        if not os.path.exists(path):
            return None
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            ok = isinstance(ckpt, dict) and {"iteration", "controller", "samples"} <= set(ckpt)
        except Exception as e:  # torch raises many types for a damaged file
            raise ValueError(f"cannot resume: {path} is corrupt ({type(e).__name__}: {e})") from e
        if not ok:
            raise ValueError(f"cannot resume: {path} is not a controller checkpoint")
        if ckpt.get("fingerprint") != fingerprint:
            raise ValueError(f"cannot resume: {path} belongs to another search (fingerprint)")
        return ckpt

    @staticmethod
    def _check_consistent(output_dir, trials, ckpt, tail) -> None:
        if ckpt is None:
            if trials:
                raise ValueError(
                    f"cannot resume: {output_dir} has {len(trials)} trials but no {CONTROLLER}"
                )
            return
        it, samples = ckpt["iteration"], ckpt["samples"]
        for r in trials:
            if r["iteration"] < it:
                continue
            if r["iteration"] > it or samples is None or r["index"] >= len(samples):
                raise ValueError(
                    f"cannot resume: trial (iteration {r['iteration']}, index {r['index']}) in "
                    f"{TRIALS} is ahead of {CONTROLLER} (iteration {it})"
                )
            theta = torch.tensor(r["theta"], dtype=samples.dtype)
            if theta.shape != samples[r["index"]].shape or not torch.equal(
                theta, samples[r["index"]]
            ):
                raise ValueError(
                    f"cannot resume: theta of trial (iteration {it}, index {r['index']}) differs "
                    f"from the sample saved in {CONTROLLER}"
                )
        # Every completed iteration (< it) was checkpointed as such only after all its M trials
        # were on disk, so a missing one is damage, not an interruption.
        m = ckpt.get("samples_per_iter")
        if m is None:  # checkpoints written before samples_per_iter was recorded
            m = len(samples) if samples is not None else 1 + max(
                (r["index"] for r in trials if r["iteration"] < it), default=-1)
        logged = {(r["iteration"], r["index"]) for r in trials}
        missing = [(t, i) for t in range(it) for i in range(m) if (t, i) not in logged]
        extra = sorted(k for k in logged if k[0] < it and k[1] >= m)
        if missing or extra:
            damaged = ""
            if tail.kind == "torn":
                damaged = (f"; its last line {tail.line} ({tail.size} bytes) is damaged "
                           f"({tail.error})")
            what = (f"lacks trials {missing[:10]}{' ...' if len(missing) > 10 else ''}"
                    if missing else f"holds trials {extra[:10]} beyond {m} per iteration")
            raise ValueError(
                f"cannot resume: {os.path.join(output_dir, TRIALS)} {what} (iteration, index) "
                f"of completed iterations{damaged}. The candidates of a completed iteration are "
                "no longer stored, so its trials cannot be re-run and dropping them would change "
                "the result. Restore the file from a backup, or start over "
                "(tools/search_net.py --overwrite)."
            )

    # ------------------------------------------------------------------ trials
    def append_trial(self, record: Mapping[str, Any]) -> None:
        """Append one finished trial durably (write, flush, fsync) to ``trials.jsonl``.

        Raises ValueError for a malformed record or a trial (iteration, index) already logged, and
        TypeError for values that are not JSON-able (numpy/torch numbers are converted). Nothing is
        written then.
        """
        self._check_open()
        validate_record(record)
        key = (record["iteration"], record["index"])
        if key in self._done:
            raise ValueError(f"trial (iteration {key[0]}, index {key[1]}) is already logged")
        line = json.dumps(dict(record), default=_json_default, sort_keys=True) + "\n"
        stored = json.loads(line)
        with open(self._path(TRIALS), "ab") as f:
            f.write(line.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self._trials.append(stored)
        self._done.add(key)

    def all_trials(self) -> List[Dict[str, Any]]:
        """All logged trials, in log order (as read back from JSON)."""
        return list(self._trials)

    def finished_trials(self, iteration: int) -> Dict[int, Dict[str, Any]]:
        """Logged trials of ``iteration`` as ``{index: record}``."""
        return {r["index"]: r for r in self._trials if r["iteration"] == iteration}

    def best_trial(self) -> Optional[Dict[str, Any]]:
        """The best sampled trial by :func:`trial_order_key` among those with status "ok" (the
        highest reward of the longest-trained proxies; ties go to the later one), docs/method.md
        §9; re-evaluations of the selection stage are not sampled trials. None if no trial
        succeeded."""
        ok = search_stage_trials(self._trials)
        return max(ok, key=trial_order_key) if ok else None

    @classmethod
    def read_trials(cls, output_dir: str) -> List[Dict[str, Any]]:
        """The trials logged in ``output_dir``, read only: no lock, no fingerprint check, nothing
        written (for reports on finished searches; a torn last line is left out). Raises
        ValueError for a damaged line, like :meth:`resume`."""
        trials, _ = cls._read_trials(os.path.join(output_dir, TRIALS))
        return trials

    # ------------------------------------------------------------------ records
    def record(self, key: str, value: Any) -> None:
        """Store a JSON-able ``value`` under ``key`` in ``meta.json`` (atomically), e.g. a
        measurement the whole search depends on and that a resume must reuse, not repeat."""
        self._check_open()
        records = dict(self._meta.get("records") or {})
        records[key] = json.loads(json.dumps(value, default=_json_default))
        meta = dict(self._meta, records=records)
        _atomic_write(self._path(META), lambda f: f.write(
            json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")))
        self._meta = meta

    def recorded(self, key: str) -> Any:
        """The value :meth:`record` stored under ``key``, or None."""
        return (self._meta.get("records") or {}).get(key)

    # ------------------------------------------------------------------ controller
    def save_controller(
        self, iteration: int, controller_state: Dict[str, Any], samples: Optional[torch.Tensor],
        samples_per_iter: Optional[int] = None,
    ) -> None:
        """Atomically replace ``controller.pt``.

        Args:
            iteration (int): number of completed controller updates (= the iteration the samples
                belong to); must not go backwards.
            controller_state (dict): ``PPOController.state_dict()``.
            samples (Tensor or None): ``(M, D)`` candidates of ``iteration``, saved before any of
                its trials runs, or None right after an update (next iteration not sampled yet).
            samples_per_iter (int, optional): M of the search iterations, when ``samples`` are
                not an iteration's (the selection stage); default ``len(samples)``.
        """
        self._check_open()
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be an int >= 0, got {iteration!r}")
        if self._checkpoint is not None and iteration < self._checkpoint["iteration"]:
            raise ValueError(
                f"checkpoint iteration {iteration} is older than the saved one "
                f"({self._checkpoint['iteration']})"
            )
        if samples is not None:
            if not isinstance(samples, torch.Tensor) or samples.dim() != 2:
                raise ValueError(f"samples must be a (M, D) tensor or None, got {samples!r}")
            samples = samples.detach().to("cpu").clone()
        if samples_per_iter is None:
            samples_per_iter = (samples.shape[0] if samples is not None else
                                (self._checkpoint or {}).get("samples_per_iter"))
        ckpt = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "iteration": iteration,
            "controller": controller_state,
            "samples": samples,
            "samples_per_iter": samples_per_iter,
        }
        _atomic_write(self._path(CONTROLLER), lambda f: torch.save(ckpt, f))
        self._checkpoint = ckpt

    def load_controller(self) -> Optional[Dict[str, Any]]:
        """The latest checkpoint (dict with ``iteration``, ``controller``, ``samples``), or None
        before the first :meth:`save_controller`."""
        return self._checkpoint
