"""The post-training stages a run config names and the ranges of their settings, read from the
config alone: the stages' order, the keys each conf/post/<stage>.yaml gives, and every number and
name of post.measure, post.prune, post.quantize and post.distill. Free of torch, so `nnopt train`
answers these errors before importing it; post/ checks what needs the model or a teacher run.
"""

from __future__ import annotations

import functools

import yaml

from nnopt_cli.config import conf_dir
from nnopt_cli.config.checks import need_bool, need_choice, need_int, need_int_list, need_keys, need_num
from nnopt_cli.errors import ConfigError

STAGE_NAMES = ("prune", "quantize", "distill")  # post.STAGES: the module of each
PRUNE_METHODS = ("layer", "global", "structured")
PRUNE_SCHEDULES = ("cubic", "linear")
QUANTIZE_METHODS = ("dynamic", "static", "weight_only", "fake", "qat")
BACKENDS = ("eager", "torchao")
GRANULARITIES = ("per_tensor", "per_channel")
# activations with an int8 CPU kernel (static quantization runs them on quantized tensors)
STATIC_ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh")
SCALES = ("auto", "max", "mean", "percentile", "mse")
SCHEMES = ("symmetric", "asymmetric")
DISTILL_TARGETS = ("soft", "hard")


def stage_names(cfg: dict) -> list[str]:
    """The stages in the order given on the command line (Hydra merges `post=[a,b]` in that order)."""
    return [k for k in (cfg.get("post") or {}) if k != "measure"]


@functools.cache
def settings_of(name: str) -> tuple[str, ...]:
    """The settings conf/post/<name>.yaml gives stage `name`: each is required (a `~post.prune.sparsity`
    on the command line is one line here, not a KeyError after training)."""
    doc = yaml.safe_load((conf_dir() / "post" / f"{name}.yaml").read_text()) or {}
    # and the nodes its defaults list puts under it (`/model@distill.student: mlp_small`)
    placed = [str(k).split("@", 1)[1] for entry in doc.get("defaults") or [] if isinstance(entry, dict)
              for k, v in entry.items() if "@" in str(k) and v is not None]  # a null one is optional
    below = [p.split(".", 1)[1] for p in placed if p.startswith(f"{name}.")]
    return (*(doc.get(name) or {}).keys(), *below)


def check_post_values(cfg: dict) -> None:
    """The post-training settings' keys, names and numbers (ConfigError on the first problem)."""
    names = stage_names(cfg)
    if not names:
        return
    for name in ["measure", *names]:
        if name in STAGE_NAMES or name == "measure":
            need_keys(f"post.{name}", cfg["post"].get(name), settings_of(name))
    m = cfg["post"]["measure"]
    need_int_list("post.measure.latency_batch_sizes", m["latency_batch_sizes"], 1, allow_empty=False)
    need_int("post.measure.latency_repeats", m["latency_repeats"], 1)
    need_int("post.measure.latency_warmup", m["latency_warmup"], 0)
    if m["latency_threads"] is not None:
        need_int("post.measure.latency_threads", m["latency_threads"], 1)
    if "quantize" in names and names[-1] != "quantize":
        raise ConfigError("post", names, "quantize must be the last stage (an int8 model cannot be pruned or trained further)")
    for name in names:
        if name not in STAGE_NAMES:
            raise ConfigError("post", name, "one of " + ", ".join(STAGE_NAMES))
    if "prune" in names:
        check_prune_settings(cfg["post"]["prune"])
    if "quantize" in names:
        check_quantize_settings(cfg["post"]["quantize"], cfg["activation"]["name"])
    if "distill" in names:
        check_distill_settings(cfg["post"]["distill"])


def check_prune_settings(s: dict) -> None:
    need_choice("post.prune.method", s["method"], PRUNE_METHODS)
    threshold = s.get("threshold")
    if (s["sparsity"] is None) == (threshold is None):
        raise ConfigError("post.prune.threshold", threshold, "exactly one of post.prune.sparsity and "
                          f"post.prune.threshold set, the other null (sparsity is {s['sparsity']})")
    if threshold is None:
        need_num("post.prune.sparsity", s["sparsity"], ge=0, lt=1)
    else:
        need_num("post.prune.threshold", threshold, gt=0)
    need_int("post.prune.rounds", s["rounds"], 1)
    need_choice("post.prune.schedule", s["schedule"], PRUNE_SCHEDULES)
    need_int("post.prune.finetune_epochs", s["finetune_epochs"], 0)
    need_num("post.prune.lr_scale", s["lr_scale"], gt=0)
    need_num("post.prune.norm", s["norm"], gt=0, finite=False)  # inf: L-inf structured
    for key in ("prune_output", "compact"):
        if not isinstance(s[key], bool):
            raise ConfigError(f"post.prune.{key}", s[key], "true or false")


def check_combination(method: str, backend: str) -> str | None:
    """Why `method` cannot run on `backend`, or None when it can (fake uses neither engine)."""
    if method == "weight_only" and backend == "eager":
        return "weight_only needs quantize.backend=torchao (torch.ao has no int8 weight-only Linear)"
    if method == "static" and backend == "torchao":
        return "static needs quantize.backend=eager (nnopt uses torch.ao's calibrated int8 kernels for it)"
    if method == "qat" and backend == "eager":
        return "qat needs quantize.backend=torchao (nnopt uses torchao.quantization.qat)"
    return None


def check_quantize_settings(s: dict, activation: str) -> None:
    """The post.quantize settings alone (ConfigError on the first problem)."""
    need_choice("post.quantize.method", s["method"], QUANTIZE_METHODS)
    need_choice("post.quantize.backend", s["backend"], BACKENDS)
    need_choice("post.quantize.granularity", s["granularity"], GRANULARITIES)
    need_int("post.quantize.calibration_batches", s["calibration_batches"], 1)
    need_int("post.quantize.calibration_batch_size", s["calibration_batch_size"], 1)
    bits, method = s.get("bits", 8), s["method"]
    need_int("post.quantize.bits", bits, 1, 8)
    need_int("post.quantize.finetune_epochs", s.get("finetune_epochs", 1), 1)
    need_num("post.quantize.lr_scale", s.get("lr_scale", 1.0), gt=0)
    check_quantize_rule(s)
    reason = check_combination(method, s["backend"])
    if reason and not (method == "qat" and bits == 1):  # 1-bit QAT is nnopt's own: no engine
        raise ConfigError("post.quantize.method", method, reason)
    if bits != 8 and method in ("dynamic", "static"):
        raise ConfigError("post.quantize.bits", bits, f"8 with method={method} (int8 kernels); below 8 bits: "
                          "method=weight_only or qat (torchao) or fake (simulated)")
    if s["granularity"] == "per_tensor" and ((method == "qat" and bits > 1) or (method == "weight_only" and bits < 8)):
        raise ConfigError("post.quantize.granularity", "per_tensor", f"per_channel for method={method} with "
                          f"bits={bits} (torchao's IntxWeightOnlyConfig has no per-tensor scale)")
    if method == "static" and activation not in STATIC_ACTIVATIONS:
        raise ConfigError("activation.name", activation, "with post.quantize.method=static one of "
                          + ", ".join(STATIC_ACTIVATIONS) + " (no int8 CPU kernel for it)")


def check_quantize_rule(s: dict) -> None:
    """bits=1 and the scale / scheme keys, against the method (ConfigError on the first problem)."""
    method, bits = s["method"], s.get("bits", 8)
    need_choice("post.quantize.scale", s.get("scale", "auto"), SCALES)
    scale, scheme = scale_rule(s), s.get("scheme", "symmetric")
    need_choice("post.quantize.scheme", scheme, SCHEMES)
    need_num("post.quantize.percentile", s.get("percentile", 99.9), gt=0, le=100)
    need_num("post.quantize.mean_factor", s.get("mean_factor", 1.0), gt=0)
    if bits == 1 and method not in ("fake", "qat"):
        raise ConfigError("post.quantize.bits", 1, "1 (binary weights) with method=fake or qat "
                          f"(method={method} has no 1-bit kernel); for {method}: 2..8")
    if bits == 1 and scale == "max":
        raise ConfigError("post.quantize.scale", "max", "mean (XNOR-Net: c = mean_factor * mean|w|, mean_factor=1), "
                          "percentile or mse with bits=1 (max|w| would set nearly every weight to +-max|w|)")
    own_rule = method == "fake" or (method == "qat" and bits == 1)
    if scale != "max" and not own_rule:
        raise ConfigError("post.quantize.scale", scale, f"max with method={method} (its engine sets the scale from "
                          "max|w|); other rules: method=fake, or qat with bits=1")
    if scheme == "asymmetric":
        if bits == 1:
            raise ConfigError("post.quantize.scheme", scheme, "symmetric with bits=1 (binary weights are +-c)")
        if method not in ("fake", "weight_only"):
            raise ConfigError("post.quantize.scheme", scheme, f"symmetric with method={method}; asymmetric: "
                              "method=fake, or weight_only with backend=torchao")
        if scale not in ("max", "percentile"):
            raise ConfigError("post.quantize.scale", scale, "max or percentile with scheme=asymmetric (the range "
                              "is min..max or the (100-p)th..pth percentiles of w)")
        if method == "weight_only" and s["granularity"] != "per_channel":
            raise ConfigError("post.quantize.granularity", s["granularity"], "per_channel with "
                              "method=weight_only scheme=asymmetric (torchao's IntxWeightOnlyConfig)")


def scale_rule(s: dict) -> str:
    """The stage's scale rule; auto = mean for binary weights (XNOR-Net), max otherwise."""
    scale = s.get("scale", "auto")
    return ("mean" if s.get("bits", 8) == 1 else "max") if scale == "auto" else scale


def check_distill_settings(s: dict) -> None:
    need_num("post.distill.temperature", s["temperature"], gt=0)
    need_num("post.distill.alpha", s["alpha"], ge=0, le=1)
    need_int("post.distill.epochs", s["epochs"], 1)
    need_int("post.distill.teacher_epochs", s["teacher_epochs"], 1)
    need_bool("post.distill.baseline", s["baseline"])
    need_choice("post.distill.targets", s["targets"], DISTILL_TARGETS)
