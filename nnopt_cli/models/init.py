"""Weight initializers (conf/init/<name>.yaml), applied to every Linear and Conv layer.

Gains follow torch.nn.init.calculate_gain for the model's activation, so `xavier_*` on tanh and
`kaiming_*` on leaky_relu get the scaling their papers derive. Biases start at zero except
with `default`, which keeps PyTorch's own layer initialization untouched.
"""

from __future__ import annotations

from torch import nn

from nnopt_cli.config.checks import need_choice

INITS = ("default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal")

# calculate_gain knows these names; the others are closest to "linear"-free relu-like scaling
_GAIN_NAME = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid",
              "elu": "relu", "gelu": "relu", "silu": "relu"}


def init_weights(model: nn.Module, name: str, activation: str, negative_slope: float = 0.01,
                 mode: str = "fan_in") -> None:
    if name == "default":
        return
    nonlin = _GAIN_NAME.get(activation, "relu")
    param = negative_slope if nonlin == "leaky_relu" else None
    gain = nn.init.calculate_gain(nonlin, param)
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        w = m.weight
        if name == "xavier_uniform":
            nn.init.xavier_uniform_(w, gain=gain)
        elif name == "xavier_normal":
            nn.init.xavier_normal_(w, gain=gain)
        elif name == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=negative_slope if nonlin == "leaky_relu" else 0, mode=mode,
                                     nonlinearity=nonlin if nonlin in ("relu", "leaky_relu") else "relu")
        elif name == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=negative_slope if nonlin == "leaky_relu" else 0, mode=mode,
                                    nonlinearity=nonlin if nonlin in ("relu", "leaky_relu") else "relu")
        elif name == "orthogonal":
            nn.init.orthogonal_(w, gain=gain)
        else:
            raise ValueError(f"unknown init {name!r}")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def check_init(node: dict) -> None:
    need_choice("init.name", node.get("name"), INITS)
    if "mode" in node:
        need_choice("init.mode", node["mode"], ("fan_in", "fan_out"))
