"""Containment: one attempt = one contained group of processes, observed and killed whole.

A process group is not a container: a job that calls `setsid`, double-forks or uses `nohup`
leaves it, so "kill the process group" can leave a job's daemons running forever, and "the group
is empty" can say an attempt ended while its work goes on. Like Slurm's proctrack/cgroup and
task/cgroup plugins, Orchestra therefore puts every attempt in a control group of its own: the
kernel puts every descendant (whatever it does with sessions) in the same group, lists them in
`cgroup.procs`, and applies the attempt's limits (pids, memory) to them as a whole.

The scheduler does not place the job itself: `prepare` creates the groups and returns the
`cgroup.procs` files to join, and the attempt's shell wrapper runs `echo $$ > f` for each
*before* it starts the job, so nothing the job starts can be outside. (Until the wrapper has
joined, `alive()` is False: a caller keeps its own record of a launch in flight.)

Three implementations, best first (`detect` picks one and says which in `kind`):

- `CgroupV2`: a unified hierarchy whose `pids` and `memory` controllers we may delegate to our
  own sub-tree; `pids.max`, `memory.max`, and `cgroup.kill` (or `cgroup.freeze`) to kill.
- `CgroupV1`: the `freezer` and `pids` hierarchies (and `memory` when writable), as on the hybrid
  hosts Orchestra runs on today. Killing freezes the group first, as Slurm does for suspend, so
  no process can fork while the group is signalled (see `kill`).
- `ProcessGroup`: no writable hierarchy (not root, no delegation). The job is started in a new
  session and found by its session id and parent links. It is *weaker*: a process that leaves the
  session and whose parent has died is lost, and no limit is enforced; `strong` is False so the
  scheduler can say so at start-up.

Orchestra's groups live under the group our own process is in, per hierarchy
(`<mount>/<our path>/<root_name>/<installation>/<attempt>`), never at a hierarchy's root: the
process that runs us may itself be contained (e.g. `memory:/process_api/<id>`), and a group made at
the root would escape that limit. A scheduler restarted in another group finds its earlier
attempts' groups only if it is given the same base (record `bases` if that matters).

Everything is a few small reads and writes of cgroupfs files, no subprocess: `alive()` runs for
every running attempt in every scheduler pass.
"""
from __future__ import annotations

import errno
import os
import re
import signal as _signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Protocol, runtime_checkable

DEFAULT_PIDS_MAX = 512
FREEZE_TIMEOUT = 0.5  # seconds to wait for FROZEN before signalling anyway (a task stuck in D state)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would take "x\n"


# ------------------------------------------------------------------------------------------ quantities
_SUFFIX = {
    "": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)(?:(Ki|Mi|Gi|Ti|Pi|Ei|[kKMGTPE])|[eE]([+-]?\d+))?\s*")


def parse_quantity(text: str) -> int:
    """Bytes in a Kubernetes memory quantity: `2Gi`, `500M`, `1.5G`, `129e6`, `1024` (plain bytes).

    The queue's `memory = "2Gi"` is the same string the Kubernetes backend hands to a pod, so the
    local backend must read it the same way. A fraction of a byte is rounded up, as Kubernetes
    does. `500m` (milli-bytes, in practice a typo for 500M), negatives and anything else are
    refused with ValueError.
    """
    match = _QUANTITY.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise ValueError(f"not a memory quantity: {text!r} (e.g. 2Gi, 500M, 1.5G, 129e6, 1048576)")
    number, suffix, exponent = match.groups()
    try:
        value = Decimal(number)
        value = value * _SUFFIX[suffix or ""] if exponent is None else value.scaleb(int(exponent))
    except (InvalidOperation, KeyError):
        raise ValueError(f"not a memory quantity: {text!r}") from None
    return int(value.to_integral_value(rounding=ROUND_CEILING))


# ------------------------------------------------------------------------------------------ protocol
@runtime_checkable
class Containment(Protocol):
    """Where an attempt's processes live, how to limit, list, signal and kill them all."""

    kind: str  # "cgroup v2", "cgroup v1 (pids, memory, freezer)", "process group"
    strong: bool  # False: descendants can escape (said at start-up as weaker)

    def prepare(self, name: str, *, pids_max: int | None, memory_max: int | None) -> list[str]:
        """Create the attempt's group(s) with its limits; return the files a process writes its
        own pid into to join them (empty: nothing to join, start the job in a new session)."""
        ...

    def pids(self, name: str) -> list[int]:
        """Every process of the attempt now (empty: all gone)."""
        ...

    def alive(self, name: str) -> bool:
        """Any process of the attempt left (cheap: one small read)."""
        ...

    def signal(self, name: str, sig: int) -> None:
        """Send `sig` to every process of the attempt (e.g. SIGTERM, before `kill`)."""
        ...

    def kill(self, name: str) -> None:
        """SIGKILL every process of the attempt, including any forked while doing so."""
        ...

    def oom_killed(self, name: str) -> bool:
        """Whether the kernel killed a process of the attempt for exceeding its memory limit."""
        ...

    def remove(self, name: str) -> None:
        """Remove the attempt's group(s) once empty; no error if already gone."""
        ...


# ------------------------------------------------------------------------------------------ small I/O
def _check_name(name: str, what: str = "attempt name") -> str:
    """A single, plain path component: a name can never reach outside Orchestra's groups."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a plain name (letters, digits, '.', '_', '-')")
    return name


def _read(path: str, size: int = 65536) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _write(path: str, text: str) -> None:
    """Write a cgroupfs control file. Never creates a file: a missing one is a missing feature."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)  # O_TRUNC: as `echo >` does
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _procs(path: str) -> list[int]:
    """The pids in a `cgroup.procs` file; none when the group is gone."""
    try:
        data = _read(path, 1 << 20)
    except FileNotFoundError:
        return []
    if len(data) == 1 << 20:  # more than a read's worth: read it all
        with open(path, "rb") as handle:
            data = handle.read()
    return [int(line) for line in data.split()]


def _keyed(path: str) -> dict[str, int]:
    """A flat `key value` file (memory.events, memory.oom_control, cgroup.events); {} when gone."""
    try:
        data = _read(path).decode()
    except FileNotFoundError:
        return {}
    pairs = (line.split() for line in data.splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2 and p[1].lstrip("-").isdigit()}


def _mkdir(path: str) -> bool:
    """mkdir, an existing directory being fine; True when this call made it."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return False
    return True


def _rmdirs(paths: Iterable[str]) -> None:
    """rmdir each; a gone one is fine; the first other error is raised after trying them all."""
    first: OSError | None = None
    for path in paths:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            first = first or exc
    if first is not None:
        raise first


def _kill_until_stable(list_pids: Callable[[], list[int]], sig: int) -> None:
    """Send `sig` to every listed pid, then list again until no unsignalled pid appears.

    With SIGKILL this converges even without a freezer: a process with a fatal signal pending
    cannot complete a fork (copy_process backs out), so only children created between a listing
    and their parent's signal can appear, and the next listing catches them.
    """
    me = os.getpid()
    done: set[int] = set()
    for _ in range(1000):
        fresh = [pid for pid in list_pids() if pid not in done and pid != me]
        if not fresh:
            return
        for pid in fresh:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        done.update(fresh)
        if sig != _signal.SIGKILL:  # only SIGKILL stops forking; one pass for other signals
            return


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Poll `predicate` with a short, growing pause until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    pause = 0.0001
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.01)


# ------------------------------------------------------------------------------------------ cgroup v1
class CgroupV1:
    """Legacy hierarchies: `freezer` (tracking and killing), `pids`, and `memory` when writable.

    The freezer group is the one that counts: `prepare` returns its `cgroup.procs` first, so any
    process in any of the attempt's groups joined the freezer group before it, and `alive` reads
    only that file.
    """

    strong = True
    SPARES_MAX = 256  # ended attempts' empty groups kept, renamed, for the next attempts
    # A memory group is kept as a spare only while what its ended attempts left charged to it
    # (page cache of the files they wrote, kernel objects; all reclaimable once its processes are
    # gone) stays under this: at most this much of the next attempt's limit is taken by reclaimable
    # leftovers, and a group that reaches it (after ~10-80 trivial attempts here) is removed. A
    # job that wrote more (most real ones) gets a new group after it.
    MEMORY_SPARE_MAX_USAGE = 4 << 20

    def __init__(self, *, freezer: str, pids: str, memory: str | None = None) -> None:
        """Each argument is the directory under which attempts' groups are made (it exists).

        Spare groups (`spare-*`) a scheduler left there when it stopped are removed: only groups
        this object emptied itself are reused (see `remove`)."""
        self.bases: dict[str, str] = {"freezer": freezer, "pids": pids}
        if memory is not None:
            self.bases["memory"] = memory
        self.kind = "cgroup v1 (" + ", ".join(c for c in ("pids", "memory", "freezer") if c in self.bases) + ")"
        self._lock = threading.Lock()  # launches prepare groups from several threads
        self._spares: list[tuple[str, int | None]] = []  # (name, its pids.max) of empty, thawed groups
        self._memory_spares: list[tuple[str, int]] = []  # (name, its memory.limit_in_bytes) of empty memory groups
        self._memory_limits: dict[str, int] = {}  # memory.limit_in_bytes of the memory groups prepared here
        self._limits: dict[str, int | None] = {}  # pids.max of the groups prepared here, by attempt
        self._killed: set[str] = set()  # attempts `kill` froze: never reused (a failed thaw)
        self._made = 0
        self.drain(leftovers=True)

    def _dir(self, controller: str, name: str) -> str:
        return f"{self.bases[controller]}/{_check_name(name)}"

    def _reuse(self, name: str, pids_max: int | None) -> bool:
        """Rename a spare group to the attempt's name in both hierarchies, True when done.

        Issue 18: a cgroup mkdir and rmdir each take the kernel's cgroup mutex for a while (making
        and freeing every controller's state, then the kernel's deferred frees), which the other
        launches and the supervisors joining their groups wait for; a rename takes it briefly. A
        spare is an ended attempt's group, emptied and thawed, with its pids.max known."""
        with self._lock:
            if not self._spares:
                return False
            spare, limit = self._spares.pop()
        done: list[str] = []
        try:
            for controller in ("freezer", "pids"):
                os.rename(f"{self.bases[controller]}/{spare}", self._dir(controller, name))
                done.append(controller)
            if limit != pids_max:
                _write(f"{self._dir('pids', name)}/pids.max", "max" if pids_max is None else str(int(pids_max)))
        except OSError:  # e.g. a group of that name exists (an earlier scheduler's): made the usual way
            for controller in done:
                try:
                    os.rename(self._dir(controller, name), f"{self.bases[controller]}/{spare}")
                except OSError:
                    pass
            self._forget_spare(spare)
            return False
        return True

    def _spare_name(self) -> str:
        """A new spare's name, unique in this process (call with `_lock` held)."""
        self._made += 1
        return f"spare-{os.getpid()}-{self._made}"

    def _forget_spare(self, spare: str) -> None:
        try:
            _rmdirs(f"{self.bases[c]}/{spare}" for c in ("freezer", "pids"))
        except OSError:
            pass

    def drain(self, leftovers: bool = False) -> None:
        """Remove the spare groups (at the end, so the installation's groups can go too); with
        `leftovers`, also those an earlier scheduler left under the same bases."""
        with self._lock:
            spares = [spare for spare, _ in self._spares] + [spare for spare, _ in self._memory_spares]
            self._spares.clear()
            self._memory_spares.clear()
        if leftovers:
            for controller in self.bases:
                try:
                    spares += [n for n in os.listdir(self.bases[controller]) if n.startswith("spare-")]
                except OSError:
                    pass
        for spare in set(spares):
            for controller in self.bases:
                try:
                    os.rmdir(f"{self.bases[controller]}/{spare}")
                except OSError:
                    pass

    def prepare(self, name: str, *, pids_max: int | None, memory_max: int | None) -> list[str]:
        """mkdir the attempt in each hierarchy and set its limits; on any failure undo and raise.

        Every cgroup operation takes the kernel's global cgroup lock, which forks on the whole
        machine also wait for (issue 18), so `prepare` makes only what the attempt needs: no memory
        group without a memory limit (as Slurm's task/cgroup without ConstrainRAMSpace; the job's
        memory is then counted, and limited, where the scheduler's own is), and a new group's
        defaults (THAWED, no limit) are not written again. A group left from before gets every
        value written, so it keeps no stale state. Without a memory hierarchy `memory_max` cannot
        be enforced (see `kind`).
        """
        dirs = {c: self._dir(c, name) for c in self.bases if c != "memory" or memory_max is not None}
        reused = self._reuse(name, pids_max)
        try:
            if not reused:
                made = {c: _mkdir(dirs[c]) for c in ("freezer", "pids")}
                if not made["freezer"]:  # a kill cut short may have left it FROZEN
                    _write(f"{dirs['freezer']}/freezer.state", "THAWED")
                if pids_max is not None or not made["pids"]:
                    _write(f"{dirs['pids']}/pids.max", "max" if pids_max is None else str(int(pids_max)))
            if "memory" in dirs:
                self._prepare_memory(name, dirs["memory"], int(memory_max))  # type: ignore[arg-type]
        except BaseException:
            try:
                _rmdirs(dirs.values())
            except OSError:
                pass
            raise
        with self._lock:
            self._limits[name] = pids_max
            if "memory" in dirs:
                self._memory_limits[name] = int(memory_max)  # type: ignore[arg-type]
            self._killed.discard(name)
        return [f"{path}/cgroup.procs" for path in dirs.values()]

    def _prepare_memory(self, name: str, path: str, limit: int) -> None:
        """The attempt's memory group: a spare renamed (its limit written only if it differs), or
        a new one. A mkdir, its limit and the later rmdir cost the kernel ~4x a rename here (every
        memory group creates and removes ~30 control files, and a removed one lingers as long as
        page cache is charged to it), most of what containing a one-second job costs (issue 18)."""
        with self._lock:
            spare = self._memory_spares.pop() if self._memory_spares else None
        if spare is not None:
            try:
                os.rename(f"{self.bases['memory']}/{spare[0]}", path)
            except OSError:  # e.g. a group of that name exists (an earlier scheduler's): made the usual way
                try:
                    _rmdirs([f"{self.bases['memory']}/{spare[0]}"])
                except OSError:
                    pass  # a later scheduler removes it at start (leftover spares)
            else:
                if spare[1] != limit:
                    _write(f"{path}/memory.limit_in_bytes", str(limit))
                return
        _mkdir(path)
        _write(f"{path}/memory.limit_in_bytes", str(limit))

    def _spare_memory(self, name: str, limit: int) -> bool:
        """Keep the ended attempt's memory group as a spare, True when done: only an empty one
        whose job was never OOM-killed (`oom_killed` reads the counter, which a rename keeps) and
        whose leftover charge is under MEMORY_SPARE_MAX_USAGE."""
        path = self._dir("memory", name)
        try:
            if _procs(f"{path}/cgroup.procs") or self.oom_killed(name):
                return False
            if int(_read(f"{path}/memory.usage_in_bytes", 64)) >= self.MEMORY_SPARE_MAX_USAGE:
                return False
            with self._lock:
                if len(self._memory_spares) >= self.SPARES_MAX:
                    return False
                spare = self._spare_name()
            os.rename(path, f"{self.bases['memory']}/{spare}")
        except (OSError, ValueError):
            return False
        with self._lock:
            self._memory_spares.append((spare, limit))
        return True

    def pids(self, name: str) -> list[int]:
        """The union of the attempt's groups (a wrapper cut short may be in only some of them)."""
        found: set[int] = set()
        for controller in self.bases:
            found.update(_procs(f"{self._dir(controller, name)}/cgroup.procs"))
        return sorted(found)

    def alive(self, name: str) -> bool:
        """One read of the freezer group's `cgroup.procs` (a zombie is not listed: it has exited)."""
        try:
            return bool(_read(f"{self._dir('freezer', name)}/cgroup.procs", 16).strip())
        except FileNotFoundError:
            return False

    def signal(self, name: str, sig: int) -> None:
        _kill_until_stable(lambda: self.pids(name), sig)

    def kill(self, name: str) -> None:
        """Freeze, SIGKILL every pid, thaw: the pid list cannot grow while the group is frozen.

        A frozen v1 task keeps a pending SIGKILL until thawed, so the kill takes effect on THAWED.
        If freezing does not finish in FREEZE_TIMEOUT (a task in uninterruptible sleep), the
        group is signalled anyway, re-listing until no new pid appears (see `_kill_until_stable`).
        Returns without waiting for the processes to exit: poll `alive`.
        """
        base = self._dir("freezer", name)
        state = f"{base}/freezer.state"
        with self._lock:
            self._killed.add(name)
        try:
            _write(state, "FROZEN")
        except FileNotFoundError:
            return  # gone: nothing to kill
        try:
            _wait_for(lambda: _read(state, 32).strip() == b"FROZEN", FREEZE_TIMEOUT)
            _kill_until_stable(lambda: self.pids(name), _signal.SIGKILL)
        finally:
            try:
                _write(state, "THAWED")
            except FileNotFoundError:
                pass

    def oom_killed(self, name: str) -> bool:
        """`oom_kill` of memory.oom_control (kernel >= 4.13); older kernels: memory.failcnt > 0.

        failcnt alone over-reports (it counts every time the limit was hit, also when reclaiming
        page cache was enough), so it is only the fallback. Read it before `remove`.
        """
        if "memory" not in self.bases:
            return False
        base = self._dir("memory", name)
        control = _keyed(f"{base}/memory.oom_control")
        if "oom_kill" in control:
            return control["oom_kill"] > 0
        try:
            return int(_read(f"{base}/memory.failcnt", 64)) > 0
        except (FileNotFoundError, ValueError):
            return False

    def remove(self, name: str) -> None:
        """rmdir each group; EBUSY (processes left) is raised, a gone group is fine.

        The freezer and pids groups of an attempt prepared here and never frozen are kept as a
        spare instead (renamed `spare-*`, up to SPARES_MAX), once both are empty: a rename keeps no
        process in, and nobody joins an ended attempt's group (only its supervisor did, and only
        root may write its `cgroup.procs`). Its memory group too, when nearly empty (see
        `_spare_memory`)."""
        with self._lock:
            limit = self._limits.pop(name, ...)
            memory_limit = self._memory_limits.pop(name, None)
            reusable = limit is not ... and name not in self._killed and len(self._spares) < self.SPARES_MAX
            self._killed.discard(name)
            if reusable:
                spare = self._spare_name()
        if reusable:
            if any(_procs(f"{self._dir(c, name)}/cgroup.procs") for c in ("freezer", "pids")):
                with self._lock:
                    self._limits[name] = limit  # type: ignore[assignment]
                    if memory_limit is not None:
                        self._memory_limits[name] = memory_limit
                raise OSError(errno.EBUSY, "processes left in the group", self._dir("freezer", name))
            try:
                os.rename(self._dir("freezer", name), f"{self.bases['freezer']}/{spare}")
                try:
                    os.rename(self._dir("pids", name), f"{self.bases['pids']}/{spare}")
                except OSError:
                    os.rename(f"{self.bases['freezer']}/{spare}", self._dir("freezer", name))
                    raise
            except OSError:
                pass  # removed the usual way below
            else:
                with self._lock:
                    self._spares.append((spare, limit))  # type: ignore[arg-type]
                if "memory" in self.bases and not (memory_limit is not None and self._spare_memory(name, memory_limit)):
                    _rmdirs([self._dir("memory", name)])
                return
        _rmdirs(self._dir(c, name) for c in self.bases)


# ------------------------------------------------------------------------------------------ cgroup v2
class CgroupV2:
    """The unified hierarchy, with `pids` and `memory` enabled for our sub-tree.

    Not exercised on the hybrid hosts of today (their cgroup2 mount has no controllers); kept
    small and tested on a fake tree.
    """

    kind = "cgroup v2"
    strong = True

    def __init__(self, base: str) -> None:
        """`base`: the directory under which attempts' groups are made; its subtree_control has
        `pids memory` (done by `detect`)."""
        self.bases = {"unified": base}
        self.base = base

    def _dir(self, name: str) -> str:
        return f"{self.base}/{_check_name(name)}"

    def prepare(self, name: str, *, pids_max: int | None, memory_max: int | None) -> list[str]:
        path = self._dir(name)
        made = _mkdir(path)
        try:  # a new group's defaults ("max") are not written again (see CgroupV1.prepare)
            if pids_max is not None or not made:
                _write(f"{path}/pids.max", "max" if pids_max is None else str(int(pids_max)))
            if memory_max is not None or not made:
                _write(f"{path}/memory.max", "max" if memory_max is None else str(int(memory_max)))
        except BaseException:
            try:
                os.rmdir(path)
            except OSError:
                pass
            raise
        return [f"{path}/cgroup.procs"]

    def pids(self, name: str) -> list[int]:
        return sorted(_procs(f"{self._dir(name)}/cgroup.procs"))

    def alive(self, name: str) -> bool:
        """`populated` of cgroup.events: also true for processes in a sub-group the job made."""
        return _keyed(f"{self._dir(name)}/cgroup.events").get("populated", 0) > 0

    def signal(self, name: str, sig: int) -> None:
        _kill_until_stable(lambda: self.pids(name), sig)

    def kill(self, name: str) -> None:
        """`cgroup.kill` (Linux >= 5.14) kills the whole sub-tree atomically; else freeze + kill.

        Unlike v1, a task frozen by cgroup.freeze dies of SIGKILL at once; thawing is cleanup.
        """
        path = self._dir(name)
        try:
            _write(f"{path}/cgroup.kill", "1")
            return
        except FileNotFoundError:
            if not os.path.isdir(path):
                return
        freeze = f"{path}/cgroup.freeze"
        try:
            _write(freeze, "1")
        except FileNotFoundError:
            return
        try:
            _wait_for(lambda: _keyed(f"{path}/cgroup.events").get("frozen") == 1, FREEZE_TIMEOUT)
            _kill_until_stable(lambda: self.pids(name), _signal.SIGKILL)
        finally:
            try:
                _write(freeze, "0")
            except FileNotFoundError:
                pass

    def oom_killed(self, name: str) -> bool:
        """`oom_kill` of memory.events (sub-groups included). Read it before `remove`."""
        return _keyed(f"{self._dir(name)}/memory.events").get("oom_kill", 0) > 0

    def remove(self, name: str) -> None:
        _rmdirs([self._dir(name)])


# ------------------------------------------------------------------------------------------ fallback
@dataclass(frozen=True)
class _Stat:
    pid: int
    state: str
    ppid: int
    session: int
    start: int  # clock ticks since boot: with the pid, names a process uniquely


def _stat(pid: int | str, proc: str = "/proc") -> _Stat | None:
    try:
        data = _read(f"{proc}/{pid}/stat", 4096)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = data[data.rfind(b")") + 2:].split()
    return _Stat(int(pid), fields[0].decode(), int(fields[1]), int(fields[3]), int(fields[19]))


def _scan(proc: str = "/proc") -> list[_Stat]:
    found = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            stat = _stat(entry, proc)
            if stat is not None:
                found.append(stat)
    return found


class ProcessGroup:
    """No cgroup: the caller starts the job with `start_new_session=True` and calls `track`.

    The attempt's processes are those of the leader's session, plus every descendant (by parent
    links, at scan time) of those, which catches a `setsid` child while its parent lives. A
    process that leaves the session and whose parent then dies (`setsid` + double fork) is lost:
    this is why `strong` is False. No limit is enforced and `oom_killed` is always False. The
    tracking is in memory: after a restart the caller tracks its running attempts again.
    """

    kind = "process group"
    strong = False

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.bases: dict[str, str] = {}
        self._leaders: dict[str, tuple[int, int]] = {}  # name -> (pid, start time)

    def prepare(self, name: str, *, pids_max: int | None, memory_max: int | None) -> list[str]:
        """Nothing to create or join; the limits cannot be enforced here."""
        _check_name(name)
        return []

    def track(self, name: str, pid: int) -> None:
        """Record the attempt's session leader (the pid of a process started in a new session)."""
        stat = _stat(pid, self.proc)
        if stat is None:
            raise ProcessLookupError(f"no process {pid} to track for {name}")
        self._leaders[_check_name(name)] = (pid, stat.start)

    def _members(self, name: str) -> list[_Stat]:
        leader = self._leaders.get(name)
        if leader is None:
            return []
        sid, start = leader
        table = _scan(self.proc)
        now_at_sid = next((s for s in table if s.pid == sid), None)
        # The leader's pid reused by another session leader: its processes share our sid value,
        # so only processes older than that new leader count as ours.
        reused_at = now_at_sid.start if now_at_sid and now_at_sid.start != start else None
        roots = {s.pid for s in table
                 if s.session == sid and s.start >= start and (reused_at is None or s.start < reused_at)}
        children: dict[int, list[int]] = {}
        for s in table:
            children.setdefault(s.ppid, []).append(s.pid)
        members, todo = set(roots), list(roots)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in members:
                    members.add(child)
                    todo.append(child)
        return [s for s in table if s.pid in members and s.state not in ("Z", "X")]

    def pids(self, name: str) -> list[int]:
        return sorted(s.pid for s in self._members(name))

    def alive(self, name: str) -> bool:
        """The leader itself alive (one read) or else a scan of /proc."""
        leader = self._leaders.get(name)
        if leader is None:
            return False
        stat = _stat(leader[0], self.proc)
        if stat is not None and stat.start == leader[1] and stat.state not in ("Z", "X"):
            return True
        return bool(self._members(name))

    def signal(self, name: str, sig: int) -> None:
        _kill_until_stable(lambda: self.pids(name), sig)

    def kill(self, name: str) -> None:
        """SIGKILL until no new member appears (no freezer: see `_kill_until_stable`)."""
        _kill_until_stable(lambda: self.pids(name), _signal.SIGKILL)

    def oom_killed(self, name: str) -> bool:
        return False

    def remove(self, name: str) -> None:
        self._leaders.pop(name, None)


# ------------------------------------------------------------------------------------------ detection
@dataclass(frozen=True)
class _Mount:
    fstype: str  # "cgroup" or "cgroup2"
    point: str
    root: str
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _cgroup_mounts(mountinfo: str) -> list[_Mount]:
    """cgroup and cgroup2 mounts in /proc/self/mountinfo.

    A line is `id parent dev root point opts [optional...] - fstype source superopts`; a v1
    hierarchy's controllers are in its superopts (`rw,pids`), `root` is the group mounted there.
    """
    mounts = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        controllers = frozenset(tail[2].split(",")) if tail[0] == "cgroup" else frozenset()
        mounts.append(_Mount(tail[0], _unescape(fields[4]), _unescape(fields[3]), controllers))
    return mounts


def _own_groups(proc_cgroup: str) -> dict[str, str]:
    """Controller -> our group's path, from /proc/self/cgroup; the v2 group under key ""."""
    groups = {}
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(",") if parts[1] else [""]:
                groups[controller] = parts[2]
    return groups


def _our_dir(mount: _Mount, path: str | None) -> str | None:
    """Our group's directory in `mount`, or None when that group is not visible under it."""
    if path is None or path.endswith(" (deleted)"):
        return None
    root = mount.root.rstrip("/")
    if root and path != root and not path.startswith(root + "/"):
        return None
    return (mount.point.rstrip("/") + path[len(root):]).rstrip("/") or "/"


def _makedirs(top: str, parts: list[str]) -> str:
    path = top
    for part in parts:
        path = f"{path}/{part}"
        _mkdir(path)
    return path


def _try_v2(mounts: list[_Mount], groups: Mapping[str, str], parts: list[str]) -> CgroupV2 | None:
    """A cgroup2 mount where our group offers pids and memory and we may enable them below it."""
    for mount in (m for m in mounts if m.fstype == "cgroup2"):
        ours = _our_dir(mount, groups.get(""))
        try:
            if ours is None or not {"pids", "memory"} <= set(_read(f"{ours}/cgroup.controllers").decode().split()):
                continue
            path = ours
            for part in parts:
                # Fails with EBUSY where processes live in the group (the "no internal processes"
                # rule): then v2 is not ours to use without delegation, and the fallback applies.
                enabled = _read(f"{path}/cgroup.subtree_control").decode().split()
                if not {"pids", "memory"} <= set(enabled):
                    _write(f"{path}/cgroup.subtree_control", "+pids +memory")
                path = f"{path}/{part}"
                _mkdir(path)
            enabled = _read(f"{path}/cgroup.subtree_control").decode().split()
            if not {"pids", "memory"} <= set(enabled):
                _write(f"{path}/cgroup.subtree_control", "+pids +memory")
            return CgroupV2(path)
        except OSError:
            continue
    return None


def _try_v1(mounts: list[_Mount], groups: Mapping[str, str], parts: list[str]) -> CgroupV1 | None:
    """Writable freezer and pids hierarchies (memory too when writable) under our groups."""
    bases: dict[str, str] = {}
    for controller in ("freezer", "pids", "memory"):
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.controllers), None)
        ours = _our_dir(mount, groups.get(controller)) if mount else None
        if ours is None:
            continue
        try:
            bases[controller] = _makedirs(ours, parts)
        except OSError:
            continue
        if not os.access(bases[controller], os.W_OK):
            del bases[controller]
    if "freezer" not in bases or "pids" not in bases:
        return None
    return CgroupV1(freezer=bases["freezer"], pids=bases["pids"], memory=bases.get("memory"))


def discard(groups: Containment) -> None:
    """Undo what `detect` made, as far as nothing uses it: the spare groups, then the installation's
    group and its `root_name` group in each hierarchy, each removed only when empty (rmdir refuses
    a group with processes or children). For tools and tests that detect a containment of their own."""
    drain = getattr(groups, "drain", None)
    if drain is not None:
        drain()
    for base in getattr(groups, "bases", {}).values():
        for path in (base, os.path.dirname(base)):
            try:
                os.rmdir(path)
            except OSError:
                pass


def detect(root_name: str = "orchestra", installation: str = "", *,
           mountinfo: str = "/proc/self/mountinfo", proc_cgroup: str = "/proc/self/cgroup") -> Containment:
    """The best containment this host offers us: cgroup v2, then v1, then process groups.

    Creates (or finds) `<our group>/<root_name>/<installation>` in each hierarchy it uses, which
    also proves that we may write there. `installation` keeps two schedulers on one host apart.
    """
    parts = [_check_name(root_name, "root name")]
    if installation:
        parts.append(_check_name(installation, "installation"))
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as handle:
            mounts = _cgroup_mounts(handle.read())
        with open(proc_cgroup, encoding="utf-8", errors="replace") as handle:
            groups = _own_groups(handle.read())
    except OSError:
        return ProcessGroup()
    return _try_v2(mounts, groups, parts) or _try_v1(mounts, groups, parts) or ProcessGroup()
