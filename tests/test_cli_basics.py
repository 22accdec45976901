"""The CLI's shell: README and CI agree, --help stays light, user errors are one line."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", setup, flags=re.S)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "mergekit-kinship demo" in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci, f"CI must run the README's test command verbatim: {tests!r}"


def _help_output(argvs) -> str:
    """Run ``mergekit-kinship ARGV --help`` for each argv in one fresh interpreter; the output ends
    with the heavy libraries that got imported."""
    code = (
        "import sys\n"
        "from mergekit_kinship.cli import main\n"
        f"for argv in {argvs!r}:\n"
        "    try:\n"
        "        main(argv + ['--help'], prog_name='mergekit-kinship')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'mergekit', 'lm_eval', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


def test_help_lists_commands_without_importing_torch_or_mergekit():
    out = _help_output([[]])
    assert "HEAVY []" in out
    assert "Commands:" in out


def test_every_command_help_is_light():
    from mergekit_kinship.cli import COMMANDS, _available

    names = [n for n in COMMANDS if _available(n)]
    out = _help_output([[n] for n in names])
    assert "HEAVY []" in out
    for name in names:
        assert f"mergekit-kinship {name}" in out


def test_unknown_command_is_an_error():
    proc = subprocess.run(
        [sys.executable, "-m", "mergekit_kinship", "no-such-command"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "No such command" in proc.stderr
