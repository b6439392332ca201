"""Shell completion: `nnopt completion bash` and `nnopt train -sc install=bash` print the script;
at a TAB it asks Hydra (`nnopt train -sc query=bash`) for groups, options and keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from nnopt_cli.cli.main import COMMANDS, main
from nnopt_cli.sweep import report as sweep_report
from tests.conftest import REPO


def test_the_advertised_hydra_flag_and_the_command_print_the_same_script(capsys):
    main(["completion", "bash"])
    script = capsys.readouterr().out
    main(["train", "-sc", "install=bash"])
    assert capsys.readouterr().out == script
    assert "complete -o nospace -o default -F _nnopt_completion nnopt" in script
    assert all(c in script for c in COMMANDS)


def test_an_unknown_shell_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["completion", "tcsh"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "one of bash" in err


@pytest.mark.parametrize("line,expected", [("nnopt train opt", {"optimizer"}),
                                           ("nnopt train optimizer=ad", {"optimizer=adam", "optimizer=adamw"}),
                                           ("nnopt train optimizer.l", {"optimizer.lr="}),
                                           ("nnopt tune sched", {"scheduler="})])
def test_a_query_answers_with_hydras_candidates(capsys, monkeypatch, line, expected):
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    monkeypatch.setattr(sweep_report, "LAST_REPORT", None)  # a sweep run earlier in this test process
    main(["train", "-sc", "query=bash"])
    candidates = set(capsys.readouterr().out.split())
    assert expected <= candidates, candidates
    assert all(c.startswith(line.rsplit(" ", 1)[1]) for c in candidates)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_and_overrides(tmp_path):
    exe = tmp_path / "nnopt"  # the installed console script, as a user has it
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m nnopt_cli "$@"\n')
    exe.chmod(0o755)

    def tab(*words: str) -> list[str]:
        line = " ".join(words)
        script = ('eval "$(nnopt completion bash)"\n'
                  f'COMP_LINE="{line}"; COMP_POINT=${{#COMP_LINE}}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n'
                  '_nnopt_completion; printf "%s\\n" "${COMPREPLY[@]}"')
        env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
        out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert tab("nnopt", "co") == ["compare", "completion"]
    assert "optimizer" in tab("nnopt", "train", "opt")
    assert tab("nnopt", "train", "scheduler=co") == ["scheduler=cosine", "scheduler=cosine_restarts"]
