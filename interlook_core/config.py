"""Loading and checking the YAML configuration file.

The file has a ``core`` section and one section per extension kind
(``provider``, ``ipam``, ``dns``, ``lb``...), each holding one map per
extension name. Every key is checked: a typo is an error, never a silent
default. Errors name the file, the key path and the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import pydantic
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from interlook_core.durations import parse_duration
from interlook_core.errors import ConfigError
from interlook_core.protocol import MAX_MESSAGE_BYTES
from interlook_core.security import is_loopback_endpoint

__all__ = [
    "Config",
    "ConfigPath",
    "CoreSettings",
    "CurveClientSettings",
    "CurveServerSettings",
    "Duration",
    "ExtensionSettings",
    "duration_field",
    "load_config",
    "validate_section",
]


def _relative_to_config(value: str, info: pydantic.ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    if base is None or value in ("stdout", "stderr") or "://" in value:
        return value
    return str((Path(base) / Path(value).expanduser()).resolve())


def _duration(value: Any) -> float:
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds, written in the file as ``500ms``, ``3s``, ``10m`` or ``1h``."""


def duration_field(default: str, **constraints: Any) -> Any:
    """A :data:`Duration` setting whose default is written like the file's values.

    Args:
        default: e.g. ``"30s"``; checked like a value from the file.
        constraints: pydantic bounds on the seconds, e.g. ``gt=0``.
    """
    return Field(default, **constraints)


ConfigPath = Annotated[str, AfterValidator(_relative_to_config)]
"""A path; relative paths are taken from the configuration file's folder."""


class ExtensionSettings(BaseModel):
    """Base of every extension's settings: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


_STEP = re.compile(r"^[a-z][a-z0-9_-]*\.[a-z0-9][a-z0-9_-]*$")


def _steps(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple):
        raise ValueError(
            "must be a comma-separated list of steps, e.g. provider.file,ipam.file"
        )
    steps = tuple(str(step).strip() for step in value if str(step).strip())
    for step in steps:
        if not _STEP.match(step):
            raise ValueError(f"{step!r} is not a step name of the form kind.name")
    if len(steps) < 2:
        raise ValueError("needs a provider and at least one provisioner")
    if len(set(steps)) != len(steps):
        raise ValueError("names a step twice")
    if not steps[0].startswith("provider."):
        raise ValueError(f"the first step must be a provider, not {steps[0]!r}")
    for step in steps[1:]:
        if step.startswith("provider."):
            raise ValueError(f"only the first step may be a provider ({step!r})")
    return steps


def _log_level(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _endpoint(value: Any, info: pydantic.ValidationInfo) -> Any:
    if not isinstance(value, str):
        return value
    scheme, _, address = value.partition("://")
    if scheme not in ("tcp", "ipc") or not address:
        raise ValueError(
            f"{value!r} is not a bus address; use tcp://HOST:PORT or ipc://PATH"
        )
    if scheme == "ipc":
        return "ipc://" + _relative_to_config(address, info)
    return value


class CurveServerSettings(ExtensionSettings):
    """``core.curve``: the core's key pair and who may connect as what."""

    secretKeyFile: ConfigPath
    authorizedKeys: ConfigPath


class CurveClientSettings(ExtensionSettings):
    """The top-level ``curve`` section read by extension processes."""

    serverPublicKey: str
    secretKeyFile: ConfigPath

    @model_validator(mode="after")
    def _key_or_file(self, info: pydantic.ValidationInfo) -> CurveClientSettings:
        key = self.serverPublicKey
        if len(key) != 40:
            object.__setattr__(self, "serverPublicKey", _relative_to_config(key, info))
        return self


class CoreSettings(ExtensionSettings):
    """The ``core`` section; see the configuration reference in README.md."""

    endpoint: Annotated[str, AfterValidator(_endpoint)] = "tcp://127.0.0.1:5570"
    listenAddress: str = "127.0.0.1"
    listenPort: int = Field(8080, ge=0, le=65535)
    logLevel: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_log_level)
    ] = "INFO"
    logFile: ConfigPath = "stdout"
    workflowSteps: Annotated[tuple[str, ...], BeforeValidator(_steps)]
    workflowEntriesFile: ConfigPath = "./var/entries.db"
    workflowEntriesSync: bool = False
    checkFlowInterval: Duration = duration_field("1s", gt=0)
    workflowHousekeeperInterval: Duration = duration_field("10s", gt=0)
    serviceWIPTimeout: Duration = duration_field("30s", gt=0)
    serviceWIPMaxResends: int = Field(3, ge=0, le=100)
    serviceRetryMaxInterval: Duration = duration_field("5m", gt=0)
    cleanUndeployedServiceAfter: Duration = duration_field("10m", ge=0)
    serviceMaxLastUpdated: Duration = duration_field("90s", gt=0)
    heartbeatInterval: Duration = duration_field("2s", ge=0.1, le=600)
    # Bytes; a bigger message from a peer makes the socket drop its connection.
    maxMessageSize: int = Field(MAX_MESSAGE_BYTES, ge=65_536, le=1024**3)
    curve: CurveServerSettings | None = None
    allowInsecureBind: bool = False

    @model_validator(mode="after")
    def _refuse_open_plaintext(self) -> CoreSettings:
        if self.curve is None and not self.allowInsecureBind:
            if not is_loopback_endpoint(self.endpoint):
                raise ValueError(
                    f"endpoint {self.endpoint} is reachable from other hosts without "
                    "encryption; configure core.curve, or set core.allowInsecureBind: true "
                    "to accept that risk"
                )
        return self


@dataclass
class Config:
    """A checked configuration file."""

    path: Path
    core: CoreSettings
    curve: CurveClientSettings | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def raw_section(self, step: str) -> dict[str, Any] | None:
        kind, _, name = step.partition(".")
        kind_section = self.sections.get(kind) or {}
        return kind_section.get(name)

    def where(self, path: tuple[str, ...]) -> str:
        """``FILE:LINE`` of the deepest known key along ``path``."""
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                return f"{self.path}:{line}"
        return str(self.path)


def _record_lines(node: yaml.Node, path: tuple[str, ...], lines: dict) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            lines[path + (key,)] = key_node.start_mark.line + 1
            _record_lines(value_node, path + (key,), lines)
            lines[path + (key,)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, path + (str(index),), lines)


def _read_yaml(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc}") from exc
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _record_lines(node, (), lines)
    return data, lines


def _format_error(
    config_path: Path,
    lines: dict[tuple[str, ...], int],
    prefix: tuple[str, ...],
    error: Mapping[str, Any],
) -> str:
    loc = prefix + tuple(str(part) for part in error["loc"])
    line = None
    for depth in range(len(loc), 0, -1):
        line = lines.get(loc[:depth])
        if line is not None:
            break
    where = f"{config_path}:{line}" if line else str(config_path)
    key = ".".join(loc)
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {key}: {message}"


SettingsT = TypeVar("SettingsT", bound=BaseModel)


def validate_section(
    config: Config,
    step: str,
    model: type[SettingsT],
) -> SettingsT:
    """Check an extension's section against its settings model.

    Raises:
        ConfigError: the section is missing while the model has required
            keys, or a key is unknown or wrong. The message names the file,
            the key path and the line.
    """
    kind, _, name = step.partition(".")
    raw = config.raw_section(step)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{config.where((kind, name))}: {step}: must be a map of settings"
        )
    try:
        return model.model_validate(raw, context={"base_dir": config.base_dir})
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        if raw == {} and first["type"] == "missing":
            raise ConfigError(
                f"{config.where((kind,))}: {kind}.{name}: section is missing; "
                f"{step} needs {'.'.join(map(str, first['loc']))} at least"
            ) from None
        raise ConfigError(
            _format_error(config.path, config.lines, (kind, name), first)
        ) from None


def _validate_top_section(
    config_path: Path,
    lines: dict[tuple[str, ...], int],
    data: dict[str, Any],
    key: str,
    model: type[SettingsT],
) -> SettingsT:
    if not isinstance(data[key], dict):
        raise ConfigError(f"{config_path}:{lines.get((key,), 1)}: {key}: must be a map")
    try:
        return model.model_validate(data[key], context={"base_dir": config_path.parent})
    except pydantic.ValidationError as exc:
        raise ConfigError(
            _format_error(config_path, lines, (key,), exc.errors()[0])
        ) from None


def load_config(path: str | Path, known_steps: set[str] | None = None) -> Config:
    """Read and check a configuration file.

    Args:
        path: the YAML file.
        known_steps: the installed extensions; when given, every step in the
            workflow and every extension section must name one of them.

    Raises:
        ConfigError: the file is unreadable, not YAML, or has a key that is
            unknown, missing or wrong; the message says which and where.
    """
    config_path = Path(path).expanduser().resolve()
    data, lines = _read_yaml(config_path)
    if not isinstance(data, dict):
        raise ConfigError(
            f"{config_path}: the configuration must be a map with a core section"
        )
    if "core" not in data:
        raise ConfigError(f"{config_path}: core: required section is missing")
    core = _validate_top_section(config_path, lines, data, "core", CoreSettings)
    curve = None
    if "curve" in data:
        curve = _validate_top_section(
            config_path, lines, data, "curve", CurveClientSettings
        )

    sections: dict[str, dict[str, Any]] = {}
    for kind, section in data.items():
        if kind in ("core", "curve"):
            continue
        where = f"{config_path}:{lines.get((str(kind),), 1)}"
        if not isinstance(section, dict):
            raise ConfigError(
                f"{where}: {kind}: must be a map of extension names to settings"
            )
        if known_steps is not None:
            kinds = {step.partition(".")[0] for step in known_steps}
            if kind not in kinds:
                raise ConfigError(
                    f"{where}: {kind}: unknown section (no installed extension kind)"
                )
            for name in section:
                if f"{kind}.{name}" not in known_steps:
                    line = lines.get((str(kind), str(name)), 1)
                    raise ConfigError(
                        f"{config_path}:{line}: {kind}.{name}: no installed extension "
                        f"of that name; installed: {', '.join(sorted(known_steps))}"
                    )
        sections[str(kind)] = section

    if known_steps is not None:
        for step in core.workflowSteps:
            if step not in known_steps:
                raise ConfigError(
                    f"{config_path}:{lines.get(('core', 'workflowSteps'), 1)}: "
                    f"core.workflowSteps: {step!r} names no installed extension; "
                    f"installed: {', '.join(sorted(known_steps))}"
                )
    return Config(
        path=config_path, core=core, curve=curve, sections=sections, lines=lines
    )
