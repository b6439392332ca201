"""`nnopt completion bash`: a bash script that completes nnopt's commands and, after `nnopt train`
(and the other commands that take Hydra overrides), Hydra's config groups, options and keys.

    eval "$(nnopt completion bash)"          # this shell; add the line to ~/.bashrc to keep it
    nnopt train opt<TAB>  ->  optimizer=  optimizer/wrapper=
    nnopt train optimizer=ad<TAB>  ->  optimizer=adadelta  optimizer=adafactor  ...

At each TAB the script asks `nnopt train -sc query=bash`, Hydra's own completion, which composes
conf/ with the words already typed. `nnopt train -sc install=bash` (what `nnopt train --help`
advertises) prints this same script: Hydra's would register the completion for `nnopt` as if the
first word after it were an override.
"""

from __future__ import annotations

import os

from nnopt_cli.errors import NnoptError, report_errors

SHELLS = ("bash",)
# commands whose arguments are Hydra overrides of conf/train.yaml
HYDRA_COMMANDS = ("train", "tune", "lr-find", "tune-lr")
SC_FLAGS = ("-sc", "--shell-completion")

SCRIPT = r"""_nnopt_completion()
{
    local cur=${COMP_WORDS[COMP_CWORD]}
    if (( COMP_CWORD == 1 )); then
        COMPREPLY=($(compgen -W "%(commands)s --help --version" -- "$cur"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        %(hydra)s)
            local choices
            choices=$(COMP_LINE="$COMP_LINE" COMP_POINT="$COMP_POINT" "${COMP_WORDS[0]}" train -sc query=bash 2>/dev/null)
            COMPREPLY=($(compgen -o nospace -W "$choices" -- "$cur"))
            ;;
        completion)
            COMPREPLY=($(compgen -W "%(shells)s" -- "$cur"))
            ;;
    esac
}
# `optimizer=ad` is one word to complete, as Hydra's own script has it
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _nnopt_completion nnopt
"""


def bash_script(commands: list[str]) -> str:
    return SCRIPT % {"commands": " ".join(commands), "hydra": "|".join(HYDRA_COMMANDS), "shells": " ".join(SHELLS)}


def _shell(args: list[str]) -> str:
    if len(args) != 1 or args[0] not in SHELLS:
        raise NnoptError(f"{' '.join(args) or 'no shell'!r}: one of {', '.join(SHELLS)}: "
                         'eval "$(nnopt completion bash)" (zsh: run autoload -U bashcompinit && bashcompinit first)')
    return args[0]


def run(args: list[str], commands: list[str]) -> None:
    """`nnopt completion bash`: print the script."""
    report_errors("completion", _shell, args)
    print(bash_script(commands), end="")


def hydra_flag(args: list[str], commands: list[str]) -> bool:
    """`nnopt train -sc install=bash | uninstall=bash | query=bash`. install and uninstall print
    a script here (True: done); a query is Hydra's to answer, on the words after the command."""
    action, _, shell = next((a for a in args if "=" in a and not a.startswith("-")), "=").partition("=")
    if action == "install":
        report_errors("train -sc", _shell, [shell])
        print(bash_script(commands), end="")
        return True
    if action == "uninstall":
        report_errors("train -sc", _shell, [shell])
        print("complete -r nnopt 2>/dev/null; unset -f _nnopt_completion")
        return True
    if action == "query" and "COMP_LINE" in os.environ:
        # Hydra drops the program's name from the line; the command's name must go too
        words = os.environ["COMP_LINE"].split(" ")
        if len(words) > 1 and words[1] in commands:
            os.environ["COMP_LINE"] = " ".join([words[0], *words[2:]])
    return False
