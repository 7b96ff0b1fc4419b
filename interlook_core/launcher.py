"""``interlook up``: the core and one process per extension, under supervisord.

Process supervision (restart with backoff, clean stop of the whole group on
SIGTERM or Ctrl-C) is supervisor's job; this module only writes its
configuration for the workflow in the config file and hands over to it.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from interlook_core.config import Config

__all__ = ["exec_supervisord", "supervisord_config"]


def _program(name: str, command: list[str], priority: int) -> str:
    return f"""
[program:{name}]
command={shlex.join(command)}
priority={priority}
autostart=true
autorestart=true
startsecs=1
startretries=100
stopsignal=TERM
stopwaitsecs=10
killasgroup=true
redirect_stderr=true
stdout_logfile=/dev/stdout
stdout_logfile_maxbytes=0
"""


def supervisord_config(config: Config, runtime_dir: Path) -> str:
    """A supervisord configuration running the core and every workflow step."""
    interlook = [sys.executable, "-m", "interlook_core.cli"]
    parts = [
        f"""[supervisord]
nodaemon=true
logfile=/dev/null
logfile_maxbytes=0
loglevel=warn
pidfile={runtime_dir / "supervisord.pid"}
childlogdir={runtime_dir}
{"user=root" if os.geteuid() == 0 else ""}
""",
        _program("core", [*interlook, "core", "-c", str(config.path)], 10),
    ]
    for step in config.core.workflowSteps:
        program = step.replace(".", "-")
        parts.append(
            _program(program, [*interlook, "ext", step, "-c", str(config.path)], 20)
        )
    return "".join(parts)


def exec_supervisord(config: Config) -> None:
    """Replace this process with supervisord running the process group.

    Its configuration and pid file go beside the entries file (``up/`` in
    its folder), so each run reuses one folder instead of leaving another.
    """
    runtime_dir = Path(config.core.workflowEntriesFile).parent / "up"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    conf = runtime_dir / "supervisord.conf"
    conf.write_text(supervisord_config(config, runtime_dir), encoding="utf-8")
    print(f"interlook up: supervisord config {conf}", flush=True)
    os.execv(
        sys.executable,
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf)],
    )
