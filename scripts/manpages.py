"""rocker(1), rockerd(8) and the bash and zsh completions, rendered from the help the programs print.

rocker(1) comes from the manual pages in rocker_client/cli/manual.py and the options argparse
knows (what `rocker COMMAND --help` prints); rockerd(8) from `rockerd --help`. The completions
take commands and options from the same parser, and live rocker names from `rocker ps`.
scripts/gen_docs.py writes them to share/ (and --check compares); setup.py installs share/ into
the environment's prefix, where man(1) finds pages for the programs on PATH.
"""

from __future__ import annotations

import argparse
import io
import os
import textwrap
from contextlib import redirect_stdout
from pathlib import Path

from rocker_client import cli

ROOT = Path(__file__).resolve().parent.parent
SHARE = ROOT / "share"
TH_DATE = "2026"  # fixed: the pages must not change with the day they are generated


def _roff(text: str) -> str:
    """Escape what roff would read as requests or escapes."""
    out = []
    for line in text.replace("\\", "\\e").split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        out.append(line.replace("-", "\\-"))
    return "\n".join(out)


def _pre(text: str) -> list[str]:
    return [".nf", _roff(textwrap.dedent(text).strip("\n")), ".fi"]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help is not argparse.SUPPRESS]


def _option_lines(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    for a in _options(parser):
        name = ", ".join(a.option_strings) + (f" {a.metavar}" if a.metavar and a.nargs != 0 else "")
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(a.help or "")]
    return out


def render_rocker_1() -> str:
    parser = cli.build_parser()
    subs = _subparsers(parser)
    top = cli.PAGES["rocker"]
    out = ['.TH ROCKER 1 "' + TH_DATE + '" rocker "User Commands"', ".SH NAME", f"rocker \\- {_roff(top.summary)}",
           ".SH SYNOPSIS", *_pre(top.synopsis), ".SH DESCRIPTION", _roff(top.description), ".SH OPTIONS",
           *_option_lines(parser)]
    for title, text in top.sections:
        if title != "commands":
            out += [f".SH {title.upper()}", *_pre(text)]
    out.append(".SH COMMANDS")
    for name, page in cli.PAGES.items():
        if name == "rocker":
            continue
        out += [f'.SS "rocker {name}" \\- {_roff(page.summary)}', *_pre(page.synopsis), ".PP",
                _roff(page.description), *_option_lines(subs[name])]
        for title, text in page.sections:
            out += [".PP", f"\\fI{_roff(title)}\\fR", *_pre(text)]
        if page.examples:
            out += [".PP", "\\fIexamples\\fR"]
            for what, cmd in page.examples:
                out += [".PP", _roff(what), *_pre("    " + cmd.replace("\n", "\n    "))]
        if page.exit_status:
            out += [".PP", "\\fIexit status\\fR"]
            for code, meaning in page.exit_status:
                out += [".TP", f"\\fB{_roff(code)}\\fR", _roff(meaning)]
    out += [".SH EXIT STATUS"]
    for code, meaning in top.exit_status:
        out += [".TP", f"\\fB{_roff(code)}\\fR", _roff(meaning)]
    out += [".SH SEE ALSO", "\\fBrockerd\\fR(8), \\fBbwrap\\fR(1), \\fBsystemd-nspawn\\fR(1)"]
    return "\n".join(out) + "\n"


def _rockerd_help() -> str:
    from rockerd import main as rockerd_main

    buf = io.StringIO()
    os.environ["COLUMNS"] = "80"  # argparse wraps to the terminal: the page must not depend on it
    with redirect_stdout(buf):
        try:
            rockerd_main.parse_args(["--help"])
        except SystemExit:
            pass
    return buf.getvalue()


def render_rockerd_8() -> str:
    usage, _, rest = _rockerd_help().partition("\n\n")
    description, _, options = rest.partition("\n\n")
    out = ['.TH ROCKERD 8 "' + TH_DATE + '" rocker "System Administration"', ".SH NAME",
           "rockerd \\- the rocker daemon: builds app sandboxes on request", ".SH SYNOPSIS",
           *_pre(usage.removeprefix("usage: ")), ".SH DESCRIPTION", _roff(description.strip()),
           "It serves the varlink interface io.rocker.Rocker on a unix socket, its own or one systemd passes "
           "(rockerd.socket). Its log goes to stderr: the journal under systemd (\\fBjournalctl \\-u rockerd\\fR).",
           ".SH OPTIONS", *_pre(options.partition("\n")[2]),
           ".SH SEE ALSO", "\\fBrocker\\fR(1), \\fBsystemd.socket\\fR(5)"]
    return "\n".join(out) + "\n"


NAME_COMMANDS = ("exec", "inspect", "kill")  # their NAME arguments: live rockers


def _words() -> tuple[list[str], dict[str, list[str]]]:
    parser = cli.build_parser()
    top = [s for a in _options(parser) for s in a.option_strings]
    per = {name: [s for a in _options(p) for s in a.option_strings] for name, p in _subparsers(parser).items()}
    return top, per


def render_bash() -> str:
    top, per = _words()
    cases = "\n".join(f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in per.items())
    return f"""# bash completion for rocker (generated by scripts/gen_docs.py from the CLI's parser: do not edit)
_rocker_names() {{
    rocker ps --json 2>/dev/null |
        python3 -c 'import json,sys; print(" ".join(r["guard_pname"] for r in json.load(sys.stdin)))' 2>/dev/null
}}

_rocker() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${{COMP_WORDS[i]}} in
            --socket) ((i++)) ;;
            -*) ;;
            *) cmd=${{COMP_WORDS[i]}}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W "{" ".join(per)} {" ".join(top)}" -- "$cur"))
        return
    fi
    local opts=""
    case $cmd in
{cases}
    esac
    case ${{COMP_WORDS[COMP_CWORD-1]}} in
        --pkg|--env-file|-o|--output|--socket) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --exec-dir|--data-dir|--overlay|-w|--workdir) COMPREPLY=($(compgen -d -- "$cur")); return ;;
    esac
    if [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ " {" ".join(NAME_COMMANDS)} " == *" $cmd "* ]]; then
        COMPREPLY=($(compgen -W "$(_rocker_names)" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -F _rocker rocker
"""


def render_zsh() -> str:
    top, per = _words()
    commands = " ".join(f"'{n}:{cli.PAGES[n].summary.replace(chr(39), '')}'" for n in per)
    cases = "\n".join(f"            ({name}) compadd -- {' '.join(opts)} ;;" for name, opts in per.items())
    return f"""#compdef rocker
# zsh completion for rocker (generated by scripts/gen_docs.py from the CLI's parser: do not edit)
_rocker_names() {{
    local -a names
    names=(${{(f)"$(rocker ps --json 2>/dev/null | python3 -c 'import json,sys
for r in json.load(sys.stdin): print(r["guard_pname"])' 2>/dev/null)"}})
    compadd -a names
}}

_rocker() {{
    local cmd i
    for ((i = 2; i < CURRENT; i++)); do
        case ${{words[i]}} in
            --socket) ((i++)) ;;
            -*) ;;
            *) cmd=${{words[i]}}; break ;;
        esac
    done
    if [[ -z $cmd ]]; then
        local -a commands
        commands=({commands})
        _describe command commands
        compadd -- {" ".join(top)}
        return
    fi
    if [[ ${{words[CURRENT]}} == -* ]]; then
        case $cmd in
{cases}
        esac
    elif [[ " {" ".join(NAME_COMMANDS)} " == *" $cmd "* ]]; then
        _rocker_names
    else
        _files
    fi
}}

_rocker "$@"
"""


def outputs() -> dict[Path, str]:
    """Every generated file and its text."""
    return {SHARE / "man/man1/rocker.1": render_rocker_1(), SHARE / "man/man8/rockerd.8": render_rockerd_8(),
            SHARE / "bash-completion/completions/rocker": render_bash(),
            SHARE / "zsh/site-functions/_rocker": render_zsh()}
