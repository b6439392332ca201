"""Where the Hydra configs live, and the checks every config passes before any work starts.

Each check names the key, the value given and what is allowed (ConfigError), so a typo costs
one line of output and no training time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nnopt_cli.errors import ConfigError


def conf_dir() -> Path:
    """conf/ inside an installed wheel, or the repository's conf/ in a checkout / editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").exists():
            return candidate
    raise FileNotFoundError(f"nnopt's conf/ folder not found next to {here}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def need_int(key: str, v: Any, lo: int | None = None, hi: int | None = None) -> None:
    ok = _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi)
    if not ok:
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(key, v, f"an integer {rng}" if lo is not None else "an integer")


def need_num(key: str, v: Any, *, gt: float | None = None, ge: float | None = None,
             lt: float | None = None, le: float | None = None) -> None:
    ok = _is_num(v) and v == v  # v == v rejects NaN
    ok = ok and (gt is None or v > gt) and (ge is None or v >= ge) and (lt is None or v < lt) and (le is None or v <= le)
    if not ok:
        bounds = [f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                  f"< {lt}" if lt is not None else "", f"<= {le}" if le is not None else ""]
        raise ConfigError(key, v, "a number " + " and ".join(b for b in bounds if b))


def need_choice(key: str, v: Any, choices: tuple) -> None:
    if v not in choices:
        raise ConfigError(key, v, "one of " + ", ".join(map(str, choices)))


def need_int_list(key: str, v: Any, lo: int = 1, allow_empty: bool = True) -> None:
    if not isinstance(v, list) or (not allow_empty and not v) or not all(_is_int(x) and x >= lo for x in v):
        raise ConfigError(key, v, f"a list of integers >= {lo}" + ("" if allow_empty else " (at least one)"))


def validate(cfg: dict) -> None:
    """Check a resolved config (plain dict). Raises ConfigError on the first problem found."""
    from nnopt_cli.activation import ACTIVATIONS
    from nnopt_cli.batch_size import POLICIES
    from nnopt_cli.init import INITS
    from nnopt_cli.models import MODELS
    from nnopt_cli.post import validate_post

    need_int("epochs", cfg["epochs"], 1)
    need_int("seed", cfg["seed"], 0)
    if cfg["threads"] is not None:
        need_int("threads", cfg["threads"], 1)
    need_int("eval_batch_size", cfg["eval_batch_size"], 1)
    need_int("log_every", cfg["log_every"], 1)
    need_int("checkpoint.every", cfg["checkpoint"]["every"], 0)
    if not isinstance(cfg["skip_completed"], bool):
        raise ConfigError("skip_completed", cfg["skip_completed"], "true or false")
    if cfg["resume"] is not None and not isinstance(cfg["resume"], str):
        raise ConfigError("resume", cfg["resume"], "the path of a run folder")
    need_choice("precision", cfg["precision"], ("fp32", "bf16", "fp16"))
    if not isinstance(cfg["deterministic"], bool):
        raise ConfigError("deterministic", cfg["deterministic"], "true or false")

    m = cfg["model"]
    need_choice("model.name", m["name"], MODELS)
    need_num("model.dropout", m.get("dropout", 0.0), ge=0, lt=1)
    if m["name"] == "mlp":
        need_int_list("model.hidden", m["hidden"])
    else:
        need_int_list("model.channels", m["channels"], allow_empty=False)
        need_int_list("model.fc", m["fc"])
        need_int("model.kernel_size", m["kernel_size"], 1)
    need_choice("activation.name", cfg["activation"]["name"], tuple(ACTIVATIONS))
    if "negative_slope" in cfg["activation"]:
        need_num("activation.negative_slope", cfg["activation"]["negative_slope"], ge=0)
    need_choice("init.name", cfg["init"]["name"], INITS)
    if "mode" in cfg["init"]:
        need_choice("init.mode", cfg["init"]["mode"], ("fan_in", "fan_out"))

    opt = cfg["optimizer"]
    if "_target_" not in opt:
        raise ConfigError("optimizer._target_", None, "a torch.optim class such as torch.optim.Adam")
    need_num("optimizer.lr", opt.get("lr"), gt=0)
    if "weight_decay" in opt:
        need_num("optimizer.weight_decay", opt["weight_decay"], ge=0)
    if "momentum" in opt:
        need_num("optimizer.momentum", opt["momentum"], ge=0, lt=1)

    s = cfg["scheduler"]
    if "_target_" in s:
        need_choice("scheduler.interval", s.get("interval", "epoch"), ("epoch", "step"))
        if "gamma" in s:
            need_num("scheduler.gamma", s["gamma"], gt=0, le=1)
        if "step_size" in s:
            need_int("scheduler.step_size", s["step_size"], 1)
        if "milestones" in s:
            need_int_list("scheduler.milestones", s["milestones"])
        if "warmup_fraction" in s:
            need_num("scheduler.warmup_fraction", s["warmup_fraction"], ge=0, lt=1)
        if "monitor" in s:
            need_choice("scheduler.monitor", s["monitor"], ("val/loss", "val/acc"))
        if "eta_min" in s:
            need_num("scheduler.eta_min", s["eta_min"], ge=0)

    for name, p in cfg["regularizer"].items():
        need_choice("regularizer", name, ("l1", "l2", "elastic"))
        need_num(f"regularizer.{name}.weight", p.get("weight"), ge=0)
        if name == "elastic":
            need_num("regularizer.elastic.l1_ratio", p.get("l1_ratio"), ge=0, le=1)

    b = cfg["batch_size"]
    need_choice("batch_size.policy", b["policy"], POLICIES)
    need_choice("batch_size.lr_scaling", b["lr_scaling"], ("none", "linear", "sqrt"))
    if b["policy"] in ("fixed", "double"):
        need_int("batch_size.size", b["size"], 1)
    if b["policy"] == "ramp":
        need_int("batch_size.start", b["start"], 1)
        need_int("batch_size.end", b["end"], 1)
    if b["policy"] == "double":
        need_int("batch_size.every", b["every"], 1)
        need_num("batch_size.factor", b["factor"], gt=1)
        need_int("batch_size.max_size", b["max_size"], b["size"])
        if b["instead_of_lr_decay"] and s.get("name") not in ("step", "multistep"):
            raise ConfigError("batch_size.instead_of_lr_decay", True,
                              f"needs scheduler=step or scheduler=multistep to take the decay epochs from (got scheduler={s.get('name')})")
    if b["policy"] == "random":
        need_int("batch_size.min_size", b["min_size"], 1)
        need_int("batch_size.max_size", b["max_size"], b["min_size"])

    need_int("batch_size.base_size", b["base_size"], 1)

    g = cfg["grad_clip"]
    need_choice("grad_clip.mode", g["mode"], ("none", "norm", "value"))
    if g["mode"] == "norm":
        need_num("grad_clip.max_norm", g["max_norm"], gt=0)
        need_num("grad_clip.norm_type", g["norm_type"], gt=0)
    if g["mode"] == "value":
        need_num("grad_clip.clip_value", g["clip_value"], gt=0)

    es = cfg["early_stopping"]
    if es["enabled"]:
        need_choice("early_stopping.monitor", es["monitor"], ("val/loss", "val/acc"))
        need_choice("early_stopping.mode", es["mode"], ("min", "max"))
        need_int("early_stopping.patience", es["patience"], 1)
        need_num("early_stopping.min_delta", es["min_delta"], ge=0)

    d = cfg["dataset"]
    need_int("dataset.val_size", d["val_size"], 1)
    if "split_seed" in d:
        need_int("dataset.split_seed", d["split_seed"], 0)
    if d["name"] == "synthetic":
        need_int("dataset.n_train", d["n_train"], 2)
        need_int("dataset.n_test", d["n_test"], 1)
        need_int("dataset.num_classes", d["num_classes"], 2)
        need_num("dataset.noise", d["noise"], ge=0)

    validate_post(cfg)  # post-training stages: checked before training starts
