"""lb.haproxy: a frontend and a backend per service in a running HAProxy.

HAProxy runs in master-worker mode with the operator's main file and
``configFile`` as a second ``-f``; interlook writes only ``configFile``.
The services are kept in ``stateFile`` (JSON, written atomically) and the
file is rebuilt from it on each change:

1. the change is checked (:mod:`interlook_ext.haproxy_config`) and queued;
2. one reload thread takes every queued change at once, writes the new text
   to a temporary file beside ``configFile`` and runs
   ``haproxy -c -W -f MAIN -f NEW``; a refused change fails alone, the others go on;
3. the state file, then ``configFile``, are replaced atomically;
4. ``reload`` goes to the master socket, and ``show proc`` tells whether the
   master loaded the file. If it did not (an address it cannot bind), the
   previous file is put back and loaded again, and the change fails;
5. every step waiting on that batch gets its reply.

So many services changing at once give few reloads, and a reply is sent only
after the reload that holds its change. When the master socket cannot be
reached (HAProxy stopped, or its worker died and took the master with it),
the checked file stays in place for HAProxy's next start and the step fails;
the core retries it and the retry reloads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from interlook_core.config import (
    ConfigPath,
    Duration,
    ExtensionSettings,
    duration_field,
)
from interlook_core.errors import ConfigError, StepError
from interlook_core.service import Service
from interlook_ext.atomic_file import read_if_present, write_atomically
from interlook_ext.base import Provisioner
from interlook_ext.haproxy_config import (
    BadDefinition,
    LbRecord,
    RenderOptions,
    record_from_service,
    render,
)

__all__ = ["HaproxyLoadBalancer", "HaproxySettings", "MasterCli", "ReloadFailed"]

log = logging.getLogger(__name__)

_MASTER_LINE = re.compile(r"^\d+\s+master\s+(\d+)\s+\[failed:\s*(\d+)\]", re.MULTILINE)
_MAX_MESSAGE = 1500


class HaproxySettings(ExtensionSettings):
    configFile: ConfigPath
    mainConfigFile: ConfigPath
    masterSocket: ConfigPath
    haproxyBinary: str = "haproxy"
    httpPort: int = Field(80, ge=1, le=65535)
    httpsPort: int = Field(443, ge=1, le=65535)
    mode: Literal["http", "tcp"] = "http"
    healthCheck: bool = True
    healthCheckInterval: Duration = duration_field("2s", ge=0.1, le=3600)
    stateFile: ConfigPath = "./var/lb-haproxy.json"
    timeout: Duration = duration_field("15s", gt=0, le=600)

    @field_validator("mainConfigFile")
    @classmethod
    def _main_exists(cls, path: str) -> str:
        if not Path(path).is_file():
            raise ValueError(f"{path} is not a file (HAProxy's main configuration)")
        return path


class ReloadFailed(Exception):
    """HAProxy could not be reloaded; ``refused`` when it rejected the file."""

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class MasterCli:
    """HAProxy's master CLI on a unix socket: one command per connection."""

    def __init__(self, path: str, timeout: float) -> None:
        self.path = path
        self.timeout = timeout

    def command(self, line: str) -> str:
        """Send one command and read the answer until HAProxy closes.

        Raises:
            OSError: the socket cannot be reached or the connection broke.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(self.timeout)
            conn.connect(self.path)
            conn.sendall(line.encode("ascii") + b"\n")
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def reload_counts(self) -> tuple[int, int]:
        """(reloads, failed reloads since the last good one) of the master."""
        answer = self.command("show proc")
        found = _MASTER_LINE.search(answer)
        if found is None:
            raise OSError(f"unexpected answer to 'show proc': {answer[:200]!r}")
        return int(found.group(1)), int(found.group(2))

    def reload(self) -> None:
        """Reload and wait for the master to come back.

        Raises:
            ReloadFailed: the socket cannot be reached, the master did not come
                back in time, or it refused the configuration (``refused``).
        """
        try:
            before, _ = self.reload_counts()
            self.command("reload")
        except OSError as exc:
            raise ReloadFailed(
                f"cannot reach HAProxy's master socket {self.path}: {exc}"
            ) from None
        deadline = time.monotonic() + self.timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                reloads, failed = self.reload_counts()
            except OSError as exc:
                # The master re-executes itself during a reload: not there yet.
                last_error = exc
                time.sleep(0.05)
                continue
            if reloads > before:
                if failed:
                    raise ReloadFailed(
                        "HAProxy refused the new configuration when loading it (it passed "
                        "'haproxy -c'; typically an address it cannot bind; see HAProxy's log)",
                        refused=True,
                    )
                return
            time.sleep(0.05)
        raise ReloadFailed(
            f"HAProxy's master did not come back within {self.timeout:g}s after reload"
            + (f" ({last_error})" if last_error else "")
        )


@dataclass
class _Change:
    """One step's change, waiting for the reload that holds it."""

    name: str
    record: LbRecord | None
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def finish(self, error: str | None = None) -> None:
        self.error = error
        self.done.set()


class HaproxyLoadBalancer(Provisioner):
    """Publishes each service on ``public_ip:httpPort`` (``httpsPort`` with tls).

    Error handling: a definition that cannot be written, a port already taken
    on the same IP, a file HAProxy refuses, or a master socket that does not
    answer is a :class:`StepError` with the reason. Logs to
    ``interlook_ext.lb_haproxy``.
    """

    settings_model = HaproxySettings
    settings: HaproxySettings
    # Steps wait on the shared reload thread, so many may be in flight.
    capacity: ClassVar[int] = 32

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.settings
        self.config_file = Path(settings.configFile)
        self.main_file = Path(settings.mainConfigFile)
        self.state_file = Path(settings.stateFile)
        self.options = RenderOptions(
            http_port=settings.httpPort,
            https_port=settings.httpsPort,
            mode=settings.mode,
            health_check=settings.healthCheck,
            check_interval_ms=max(100, round(settings.healthCheckInterval * 1000)),
        )
        self.cli = MasterCli(settings.masterSocket, settings.timeout)
        if not self.main_file.is_file():
            raise ConfigError(
                f"lb.haproxy: mainConfigFile {self.main_file} is not a file"
            )
        self._records = self._load_state()
        self._queue: list[_Change] = []
        self._wakeup = threading.Condition()
        self._stopping = False
        self.reloads = 0
        # The file on disk may hold changes HAProxy has not loaded (a lost
        # reload, or a file rebuilt at start): the next batch reloads.
        self._needs_reload = self._read_file() != self._text(self._records)
        self._worker = threading.Thread(
            target=self._run, name="haproxy-reload", daemon=True
        )
        self._worker.start()

    # -- files ---------------------------------------------------------------

    def _load_state(self) -> dict[str, LbRecord]:
        text = read_if_present(self.state_file, "lb.haproxy: stateFile")
        if text is None:
            return {}
        try:
            raw = json.loads(text)["services"]
            records = [LbRecord.from_json(item) for item in raw]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"lb.haproxy: stateFile {self.state_file} is not a services file ({exc}); "
                "restore it or move it away to start empty"
            ) from exc
        return {record.name: record for record in records}

    def _save_state(self, records: dict[str, LbRecord]) -> None:
        payload = json.dumps(
            {"version": 1, "services": [records[n].to_json() for n in sorted(records)]},
            indent=1,
        )
        write_atomically(self.state_file, payload)

    def _read_file(self) -> str | None:
        try:
            return self.config_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    def _text(self, records: dict[str, LbRecord]) -> str:
        return render(list(records.values()), self.options)

    def _check(self, text: str) -> str | None:
        """None when ``haproxy -c`` accepts MAIN + ``text``, else its complaint."""
        settings = self.settings
        directory = self.config_file.parent
        temp: str | None = None
        try:
            try:
                directory.mkdir(parents=True, exist_ok=True)
                handle, temp = tempfile.mkstemp(
                    prefix=f".{self.config_file.name}-check-", dir=directory
                )
                with os.fdopen(handle, "w", encoding="utf-8") as stream:
                    stream.write(text)
            except OSError as exc:
                return f"cannot write a file to check in {directory}: {exc}"
            try:
                # -W as HAProxy runs: a master-worker file without frontends is valid.
                result = subprocess.run(
                    [
                        settings.haproxyBinary,
                        "-c",
                        "-W",
                        "-f",
                        str(self.main_file),
                        "-f",
                        temp,
                    ],
                    capture_output=True,
                    text=True,
                    timeout=settings.timeout,
                )
            except FileNotFoundError:
                return f"haproxyBinary {settings.haproxyBinary!r} not found"
            except OSError as exc:
                return f"cannot run haproxyBinary {settings.haproxyBinary!r}: {exc}"
            except subprocess.TimeoutExpired:
                return f"'haproxy -c' took longer than {settings.timeout:g}s"
        finally:
            if temp is not None:
                Path(temp).unlink(missing_ok=True)
        if result.returncode == 0:
            return None
        output = (result.stdout + result.stderr).replace(temp, str(self.config_file))
        alerts = [line.strip() for line in output.splitlines() if "ALERT" in line]
        message = (
            " | ".join(alerts) or output.strip() or f"exit status {result.returncode}"
        )
        return message[:_MAX_MESSAGE]

    # -- the reload thread ---------------------------------------------------

    def _submit(self, change: _Change) -> None:
        with self._wakeup:
            if self._stopping:
                raise StepError("lb.haproxy is shutting down")
            self._queue.append(change)
            self._wakeup.notify()
        change.done.wait()
        if change.error is not None:
            raise StepError(change.error)

    def _run(self) -> None:
        while True:
            with self._wakeup:
                while not self._queue and not self._stopping:
                    self._wakeup.wait()
                if self._stopping:
                    for change in self._queue:
                        change.finish("lb.haproxy is shutting down")
                    return
                batch, self._queue = self._queue, []
            try:
                self._apply(batch)
            except Exception as exc:
                log.error("BATCH_CRASHED changes=%d", len(batch), exc_info=True)
                for change in batch:
                    if not change.done.is_set():
                        change.finish(f"{type(exc).__name__}: {exc}")

    def _merged(self, changes: list[_Change]) -> dict[str, LbRecord]:
        records = dict(self._records)
        for change in changes:
            if change.record is None:
                records.pop(change.name, None)
            else:
                records[change.name] = change.record
        return records

    def _conflicts(self, changes: list[_Change]) -> list[_Change]:
        """Fail the changes whose address and port another service holds; the rest."""
        taken = {
            (r.public_ip, r.port(self.options)): r.name
            for r in self._merged([c for c in changes if c.record is None]).values()
        }
        accepted = []
        for change in changes:
            record = change.record
            if record is not None:
                key = (record.public_ip, record.port(self.options))
                holder = taken.get(key)
                if holder is not None and holder != record.name:
                    change.finish(
                        f"{record.public_ip} port {key[1]} is already the frontend of "
                        f"service {holder!r}"
                    )
                    continue
                taken = {k: v for k, v in taken.items() if v != record.name}
                taken[key] = record.name
            accepted.append(change)
        return accepted

    def _apply(self, batch: list[_Change]) -> None:
        batch = self._conflicts(batch)
        if not batch:
            return
        records = self._merged(batch)
        text = self._text(records)
        if (
            records == self._records
            and not self._needs_reload
            and self._read_file() == text
        ):
            for change in batch:
                change.finish()
            return
        problem = self._check(text)
        if problem is not None:
            if len(batch) > 1:
                # Find the changes HAProxy refuses by checking each on its own;
                # the others still share one reload.
                good = []
                for change in batch:
                    alone = self._check(self._text(self._merged([change])))
                    if alone is None:
                        good.append(change)
                    else:
                        self._refuse(change, alone)
                if len(good) == len(batch):
                    # Each is fine alone but not all together: one at a time.
                    for change in batch:
                        self._apply([change])
                elif good:
                    self._apply(good)
                return
            self._refuse(batch[0], problem)
            return

        previous_records, previous_text = self._records, self._text(self._records)
        try:
            self._save_state(records)
            write_atomically(self.config_file, text, mode=0o644)
        except OSError as exc:
            # The state file may already hold what configFile could not take;
            # left there, a restart would load services no step put in.
            self._needs_reload = True
            try:
                self._save_state(self._records)
            except OSError as again:
                log.error(
                    "STATE_RESTORE_FAILED file=%s reason=%s", self.state_file, again
                )
            for change in batch:
                change.finish(
                    f"cannot write {self.config_file} or {self.state_file}: {exc}"
                )
            return
        self._records = records
        self._needs_reload = True
        try:
            self._reload()
        except ReloadFailed as exc:
            if not exc.refused:
                log.warning("RELOAD_FAILED changes=%d reason=%s", len(batch), exc)
                for change in batch:
                    change.finish(
                        f"{exc}; {self.config_file} holds the checked change and HAProxy "
                        "loads it when it starts again"
                    )
                return
            log.warning("LOAD_REFUSED changes=%d action=restore previous", len(batch))
            self._restore(previous_records, previous_text)
            if len(batch) > 1:
                for change in batch:
                    self._apply([change])
                return
            batch[0].finish(f"{exc}; the previous configuration was restored")
            return
        for change in batch:
            log.info(
                "LB_%s service=%s reloads=%d",
                "REMOVED" if change.record is None else "UPDATED",
                change.name,
                self.reloads,
            )
            change.finish()

    @staticmethod
    def _refuse(change: _Change, problem: str) -> None:
        log.warning("CONFIG_REFUSED service=%s reason=%s", change.name, problem)
        change.finish(f"HAProxy refused the configuration for this service: {problem}")

    def _reload(self) -> None:
        started = time.monotonic()
        self.cli.reload()
        self.reloads += 1
        self._needs_reload = False
        log.info(
            "RELOADED socket=%s services=%d elapsed=%.3fs",
            self.cli.path,
            len(self._records),
            time.monotonic() - started,
        )

    def _restore(self, records: dict[str, LbRecord], text: str) -> None:
        try:
            self._save_state(records)
            write_atomically(self.config_file, text, mode=0o644)
            self._records = records
            self._reload()
        except (OSError, ReloadFailed) as exc:
            log.error("RESTORE_FAILED file=%s reason=%s", self.config_file, exc)

    # -- steps ---------------------------------------------------------------

    def deploy(self, service: Service) -> dict[str, Any] | None:
        """Put the service's frontend and backend in HAProxy; reply after the reload.

        Raises:
            StepError: the definition cannot be written, HAProxy refused the
                file, or the master socket did not answer.
        """
        try:
            record = record_from_service(service)
        except BadDefinition as exc:
            raise StepError(f"not written to HAProxy's file: {exc}") from None
        self._submit(_Change(service.name, record))
        return None

    def undeploy(self, service: Service) -> dict[str, Any] | None:
        """Remove the service's frontend and backend; reply after the reload.

        Raises:
            StepError: the master socket did not answer.
        """
        try:
            record_from_service(service)
        except BadDefinition as exc:
            if service.name not in self._records:
                log.debug(
                    "NOTHING_TO_REMOVE service=%r reason=%s", service.name[:80], exc
                )
                return None
        self._submit(_Change(service.name, None))
        return None

    def close(self) -> None:
        with self._wakeup:
            self._stopping = True
            self._wakeup.notify()
        self._worker.join(self.cli.timeout * 2)
