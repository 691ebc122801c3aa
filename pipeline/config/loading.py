"""Loading: dataclass defaults < YAML preset < dotted CLI overrides, with strict type checks.

A preset may start from another one with a top-level ``base:`` key (a preset name in ``configs/``
or a YAML path, relative to the preset's own folder): the base is read first (recursively) and the
preset's keys are merged over it, section by section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline import storage
from pipeline.config.dotted import apply_overrides, merge
from pipeline.config.schema import CONFIGS_DIR, ConfigError
from pipeline.config.tree import Config, from_dict


def load_config(preset: str | Path | None = "local", overrides: list[str] | None = None) -> Config:
    """Defaults < YAML preset (a name in ``configs/`` or a path) < dotted overrides."""
    data = Config().to_dict() if preset is None else merge(Config().to_dict(), _read_preset(preset), "")
    return from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    storage.publish(Path(path))


def preset_path(preset: str | Path) -> Path:
    """Resolve a preset name (``local``, ``paper``), a path to a YAML file or an object-store URI of one
    (``s3://…/best/config.yaml``, fetched onto this node)."""
    if storage.is_uri(preset):
        try:
            path = storage.fetch(storage.local_path(str(preset)))
        except (storage.StorageError, OSError) as exc:
            raise ConfigError(f"preset {preset}: {exc}") from exc
        if not path.is_file():
            raise ConfigError(f"preset file {preset} does not exist. Fix: pass an existing YAML file's URI.")
        return path
    path = Path(preset)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(
                f"preset file {path} does not exist. Fix: pass an existing YAML file "
                f"or a preset name from {CONFIGS_DIR}."
            )
        return path
    candidate = CONFIGS_DIR / f"{preset}.yaml"
    if not candidate.is_file():
        names = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown preset {str(preset)!r}. Fix: use one of {names} or a YAML path.")
    return candidate


def _read_preset(preset: str | Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = preset_path(preset)
    if path.resolve() in chain:
        names = " -> ".join(str(p) for p in (*chain, path.resolve()))
        raise ConfigError(
            f"preset {path}: its base: chain loops ({names}). Fix: remove one of the base: keys"
        )
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"preset {path} must be a mapping of sections, got {type(loaded).__name__}")
    if "base" not in loaded:
        return loaded
    base = loaded.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(
            f"preset {path}: base={base!r} must name a preset (e.g. base: paper) or a YAML path. Fix: set "
            "base to a preset name in configs/ or a file path"
        )
    relative = path.parent / base
    source: str | Path = relative if Path(base).suffix in (".yaml", ".yml") and relative.is_file() else base
    return _deep_merge(_read_preset(source, (*chain, path.resolve())), loaded)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``update`` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out
