"""Durable, resumable state of a search in one output directory (issue 6, item 5).

Files (only these are owned; anything else in the directory, e.g. detectron2's ``log.txt`` and
``config.yaml``, is ignored)::

    meta.json       {"format_version", "fingerprint", "config"}; written once by create()
    trials.jsonl    append-only, one JSON record per finished trial, fsync'd per record
    controller.pt   latest controller checkpoint, replaced atomically (temp file + os.replace)

A trial record is a JSON object with at least::

    iteration (int), index (int), theta (list of D floats), control_points (any JSON value),
    reward (finite float), metrics (dict), seconds (float or null),
    status ("ok" | "diverged")

and possibly more JSON-able keys added by the caller. The controller checkpoint is a dict::

    format_version, fingerprint, iteration (int: completed controller updates),
    controller (PPOController.state_dict()), samples (float32 (M, D) Tensor of iteration
    ``iteration``, or None when that iteration has not been sampled yet)

A kill at any moment loses at most the trials in flight: a torn last line of ``trials.jsonl`` is
dropped on resume, and ``controller.pt`` is either the old or the new checkpoint. ``resume`` checks
everything (fingerprint, readable files, trials consistent with the checkpoint) before it writes
anything, and raises on the first problem. Only one process may write a directory at a time.
"""
import hashlib
import json
import math
import os
from numbers import Real
from typing import Any, Dict, List, Mapping, Optional

import torch

__all__ = ["SearchState", "config_fingerprint", "validate_record", "STATUSES"]

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


class SearchState:
    """Trial log and controller checkpoints of one search in ``output_dir``.

    Do not construct directly: use :meth:`create` for a new search or :meth:`resume` to continue.
    The fingerprint is :func:`config_fingerprint` of the search config the caller passes, which
    should hold everything that determines the search's results (target metric, data, proxy
    schedule, controller hyper-parameters, seed, iterations, samples per iteration, ...) and
    nothing that does not (backend, number of workers, output paths).
    """

    def __init__(self, output_dir: str, fingerprint: str, trials: List[Dict], checkpoint):
        self.output_dir = output_dir
        self.fingerprint = fingerprint
        self._trials = trials
        self._done = {(r["iteration"], r["index"]) for r in trials}
        self._checkpoint = checkpoint

    def _path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls, output_dir: str, config: Mapping[str, Any], overwrite: bool = False
    ) -> "SearchState":
        """Start a new search in ``output_dir`` (created if missing).

        Raises FileExistsError if the directory already holds search state (``meta.json``,
        ``trials.jsonl`` or ``controller.pt``) and ``overwrite`` is False; nothing is touched then.
        With ``overwrite=True`` those files (only those) are deleted first.
        """
        fingerprint = config_fingerprint(config)
        os.makedirs(output_dir, exist_ok=True)
        ours = [n for n in (META, TRIALS, CONTROLLER, CONTROLLER + ".tmp", META + ".tmp")
                if os.path.exists(os.path.join(output_dir, n))]
        if ours and not overwrite:
            raise FileExistsError(
                f"{output_dir} already holds search state ({', '.join(ours)}); resume it "
                "(tools/search_net.py --resume), choose another output directory, or delete "
                "those files (SearchState.create(..., overwrite=True)) to start over"
            )
        for name in ours:
            os.remove(os.path.join(output_dir, name))
        meta = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint,
                "config": json.loads(json.dumps(config))}
        _atomic_write(os.path.join(output_dir, TRIALS), lambda f: None)
        _atomic_write(
            os.path.join(output_dir, META),
            lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True).encode("utf-8")),
        )
        return cls(output_dir, fingerprint, [], None)

    @classmethod
    def resume(cls, output_dir: str, config: Mapping[str, Any]) -> "SearchState":
        """Open the search in ``output_dir`` to continue it.

        Raises:
            FileNotFoundError: no ``meta.json`` in ``output_dir`` (nothing to resume).
            ValueError: the directory belongs to a search with another config (the message lists
                the differing keys), or a file is corrupt or inconsistent (unreadable meta or
                checkpoint, a bad trial line other than a torn last one, trials that do not match
                the checkpoint). Nothing is written in these cases.

        The only repair done (after all checks passed) is cutting a torn last line off
        ``trials.jsonl``.
        """
        fingerprint = config_fingerprint(config)
        meta_path = os.path.join(output_dir, META)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(
                f"cannot resume: {output_dir} holds no search state ({META} not found)"
            )
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
            saved_fp = meta["fingerprint"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot resume: {meta_path} is corrupt ({e})") from e
        if saved_fp != fingerprint:
            saved, current = meta.get("config") or {}, json.loads(json.dumps(config))
            keys = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
            raise ValueError(
                f"cannot resume: {output_dir} belongs to another search (config fingerprint "
                f"{saved_fp[:12]} != {fingerprint[:12]}; differing keys: {keys}). "
                "Use the original config or another output directory."
            )
        trials, valid_bytes, size = cls._read_trials(os.path.join(output_dir, TRIALS))
        checkpoint = cls._read_checkpoint(os.path.join(output_dir, CONTROLLER), fingerprint)
        cls._check_consistent(output_dir, trials, checkpoint)
        if valid_bytes != size:
            os.truncate(os.path.join(output_dir, TRIALS), valid_bytes)
        return cls(output_dir, fingerprint, trials, checkpoint)

    @staticmethod
    def _read_trials(path: str):
        """Parse trials.jsonl; returns (records, bytes of complete lines kept, file size)."""
        if not os.path.isfile(path):
            raise ValueError(f"cannot resume: {path} is missing")
        with open(path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        # The last element is b"" if the file ends with a newline, else a torn line.
        torn = lines.pop()
        records, seen = [], set()
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line.decode("utf-8"))
                validate_record(record)
            except ValueError as e:
                raise ValueError(f"cannot resume: {path} line {number} is corrupt ({e})") from e
            key = (record["iteration"], record["index"])
            if key in seen:
                raise ValueError(f"cannot resume: {path} line {number} repeats trial {key}")
            seen.add(key)
            records.append(record)
        return records, len(data) - len(torn), len(data)

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
    def _check_consistent(output_dir, trials, ckpt) -> None:
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

    # ------------------------------------------------------------------ trials
    def append_trial(self, record: Mapping[str, Any]) -> None:
        """Append one finished trial durably (write, flush, fsync) to ``trials.jsonl``.

        Raises ValueError for a malformed record or a trial (iteration, index) already logged, and
        TypeError for values that are not JSON-able (numpy/torch numbers are converted). Nothing is
        written then.
        """
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
        """The trial with status "ok" and the highest reward; ties go to the later one (larger
        (iteration, index)), docs/method.md §9. None if no trial succeeded."""
        ok = [r for r in self._trials if r["status"] == "ok"]
        if not ok:
            return None
        return max(ok, key=lambda r: (r["reward"], r["iteration"], r["index"]))

    # ------------------------------------------------------------------ controller
    def save_controller(
        self, iteration: int, controller_state: Dict[str, Any], samples: Optional[torch.Tensor]
    ) -> None:
        """Atomically replace ``controller.pt``.

        Args:
            iteration (int): number of completed controller updates (= the iteration the samples
                belong to); must not go backwards.
            controller_state (dict): ``PPOController.state_dict()``.
            samples (Tensor or None): ``(M, D)`` candidates of ``iteration``, saved before any of
                its trials runs, or None right after an update (next iteration not sampled yet).
        """
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
        ckpt = {
            "format_version": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "iteration": iteration,
            "controller": controller_state,
            "samples": samples,
        }
        _atomic_write(self._path(CONTROLLER), lambda f: torch.save(ckpt, f))
        self._checkpoint = ckpt

    def load_controller(self) -> Optional[Dict[str, Any]]:
        """The latest checkpoint (dict with ``iteration``, ``controller``, ``samples``), or None
        before the first :meth:`save_controller`."""
        return self._checkpoint
