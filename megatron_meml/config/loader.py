"""YAML + ``a.b=c`` overrides → a validated :class:`Config`.

Errors are one line and name the key: an unknown key suggests the closest valid one; a wrong type names the
expected type; a missing file or a YAML syntax error names the file (and line).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .schema import Config, ConfigError, ModelConfig

_SCALARS = (bool, int, float, str)


def _hints(cls) -> Dict[str, Any]:
    return typing.get_type_hints(cls)


def _strip_optional(tp):
    """Optional[X] -> (X, True); X -> (X, False)."""
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    base, opt = _strip_optional(tp)
    name = getattr(base, "__name__", None) or str(base).replace("typing.", "")
    return f"{name} or null" if opt else name


def _coerce(value: Any, tp, key: str) -> Any:
    """Check/convert ``value`` against annotation ``tp``; raise ConfigError naming ``key`` on mismatch."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key `{key}`: expected {_type_name(tp)}, got null")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ConfigError(f"config key `{key}`: expected a mapping (section), got {type(value).__name__}")
        return _build(base, value, key)
    if typing.get_origin(base) in (list, List):
        (item_tp,) = typing.get_args(base) or (Any,)
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"config key `{key}`: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if base in _SCALARS and not (isinstance(value, base) and not (base is int and isinstance(value, bool))):
        raise ConfigError(f"config key `{key}`: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _unknown(key: str, valid: Sequence[str], prefix: str) -> ConfigError:
    full = f"{prefix}.{key}" if prefix else key
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    hint = f"; did you mean `{prefix + '.' if prefix else ''}{close[0]}`?" if close else \
        f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key `{full}`{hint}")


def _build(cls, data: Dict[str, Any], prefix: str = ""):
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            raise _unknown(str(k), names, prefix)
        kwargs[k] = _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """CLI value: parsed as YAML (so `1e-5`, `true`, `[a, b]`, `null` work), strings left as they are."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _set_dotted(tree: Dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    cls = Config
    for i, p in enumerate(parts[:-1]):
        names = {f.name: f for f in dataclasses.fields(cls)}
        if p not in names:
            raise _unknown(p, list(names), ".".join(parts[:i]))
        tp, _ = _strip_optional(_hints(cls)[p])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"config key `{'.'.join(parts[:i + 1])}` is a value, not a section")
        cls = tp
        if node.get(p) is None:
            node[p] = {}
        elif not isinstance(node[p], dict):
            sec = ".".join(parts[:i + 1])
            hint = f"; to turn it off use `{sec}.enabled=false`" if "enabled" in _hints(tp) else ""
            raise ConfigError(f"config key `{sec}` is a section, but it was set to {node[p]!r} before `{dotted}` "
                              f"(a section takes keys such as `{dotted}`{hint})")
        node = node[p]
    names = [f.name for f in dataclasses.fields(cls)]
    if parts[-1] not in names:
        raise _unknown(parts[-1], names, ".".join(parts[:-1]))
    node[parts[-1]] = value


HF_FIELDS = {
    "num_hidden_layers": "num_layers", "hidden_size": "hidden_size", "intermediate_size": "ffn_hidden_size",
    "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_query_groups",
    "head_dim": "kv_channels", "vocab_size": "padded_vocab_size",
    "max_position_embeddings": "max_position_embeddings", "rope_theta": "rotary_base",
    "rms_norm_eps": "norm_epsilon", "tie_word_embeddings": "tie_word_embeddings",
}


def model_fields_from_hf(path: str) -> Dict[str, Any]:
    """Model-section values read from a HF ``config.json`` (Qwen2 / Llama). Unknown model types are an error."""
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config key `model.hf_config`: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config key `model.hf_config`: {path}:{e.lineno}: invalid JSON ({e.msg})") from None
    mtype = hf.get("model_type", "")
    if mtype not in ("qwen2", "llama"):
        raise ConfigError(f"config key `model.hf_config`: {path}: model_type {mtype!r} is not qwen2 or llama")
    rp = hf.get("rope_parameters")  # transformers >= 5 writes rope_theta / rope scaling inside this mapping
    if isinstance(rp, dict):
        hf = dict(hf)
        hf.setdefault("rope_theta", rp.get("rope_theta"))
        if rp.get("rope_type", "default") != "default":
            hf.setdefault("rope_scaling", rp)
    out = {dst: hf[src] for src, dst in HF_FIELDS.items() if src in hf and hf[src] is not None}
    out["arch"] = mtype
    out["add_qkv_bias"] = mtype == "qwen2" or bool(hf.get("attention_bias", False))
    out["vocab_size"] = hf["vocab_size"]
    rs = hf.get("rope_scaling") or None
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        out.update(rope_scaling="llama3", rope_scaling_factor=float(rs["factor"]),
                   rope_low_freq_factor=float(rs["low_freq_factor"]),
                   rope_high_freq_factor=float(rs["high_freq_factor"]),
                   rope_original_max_position=int(rs["original_max_position_embeddings"]))
    if "rotary_base" in out:
        out["rotary_base"] = float(out["rotary_base"])
    return out


def hf_config_path(model: Dict[str, Any]) -> Optional[str]:
    """The HF ``config.json`` the model shape comes from: ``model.hf_config`` when set, else
    ``<model.init_from_hf>/config.json`` when ``model.init_from_hf`` is set, else None. Relative paths are relative
    to the working directory (the one path rule, config/schema.py). A model folder without a config.json is a
    ConfigError naming ``model.init_from_hf``."""
    if model.get("hf_config"):
        return os.path.expanduser(str(model["hf_config"]))
    folder = model.get("init_from_hf")
    if not folder:
        return None
    folder = os.path.expanduser(str(folder))
    cfg_json = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg_json):
        what = "no such folder" if not os.path.isdir(folder) else "no config.json in it"
        raise ConfigError(f"config key `model.init_from_hf`: {os.path.abspath(folder)}: {what}; set it to a local "
                          f"Hugging Face model folder (config.json + *.safetensors), or set model.hf_config to the "
                          f"config.json that gives the model shape")
    return cfg_json


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    """Deep merge of two config trees (``over`` wins; sections merge key by key, values replace)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str, _seen: Sequence[str] = ()) -> Dict[str, Any]:
    """A YAML config tree. A top-level ``base: other.yaml`` (path relative to this file) is read first and this
    file's values are merged over it, recursively."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    if os.path.abspath(path) in _seen:
        raise ConfigError(f"{path}: `base` includes form a cycle")
    try:
        with open(path) as f:
            tree = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        raise ConfigError(f"YAML syntax error in {where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `base` must be a path to another YAML file")
    base_path = base if os.path.isabs(base) else os.path.join(os.path.dirname(os.path.abspath(path)), base)
    return _merge(read_yaml(base_path, tuple(_seen) + (os.path.abspath(path),)), tree)


def load_config(path: Optional[str] = None, overrides: Sequence[str] = ()) -> Config:
    """Build the config from an optional YAML file and ``a.b=c`` overrides (applied in order)."""
    tree: Dict[str, Any] = read_yaml(path) if path is not None else {}
    explicit_model = set((tree.get("model") or {}).keys())
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} is not of the form section.key=value")
        k, v = ov.split("=", 1)
        _set_dotted(tree, k.strip(), _parse_scalar(v))
        if k.startswith("model."):
            explicit_model.add(k.split(".", 1)[1])
    resolved = hf_config_path(tree.get("model") or {})
    if resolved:
        for k, v in model_fields_from_hf(resolved).items():
            if k not in explicit_model:
                tree.setdefault("model", {})[k] = v
    cfg = _build(Config, tree)
    cfg.model.validate_shape()
    cfg.validate_layout()
    return cfg


def to_dict(cfg) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str) -> None:
    """Write the resolved config (every field, defaults included) as YAML."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False)


def describe(cls=Config, prefix: str = "") -> List[str]:
    """One line per field: ``key (type) = default — doc``; used by ``--help-config``."""
    lines = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            lines.extend(describe(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        lines.append(f"{key} ({_type_name(hints[f.name])}) = {default!r} — {f.metadata.get('doc', '')}")
    return lines
