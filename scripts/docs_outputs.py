"""Run the docs' commands for real and write their outputs into the pages.

Every command output shown in README.md and docs/*.md comes from this script, so the docs cannot
show what Orchestra no longer prints. It walks the pages in order (PAGES) in one scratch session:
a fresh home directory for a user `alice` (HOME, USER, LOGNAME; SQLite in ~/.orchestra, the
default local backend), starting in the repository root, with the installed commands and
`scripts/` on PATH. In each page, in document order:

    <!-- run -->                 the fenced block right after it is run as written (bash -e); a
                                 `cd` in it carries over to what follows
    <!-- output: CMD -->         CMD is run, and the fenced block up to `<!-- /output -->` is
    ...                          replaced by `$ CMD` and what a user at an 80-column terminal sees
    <!-- /output -->             (a pseudo-terminal: stdout and stderr interleaved, no colour);
                                 `CMD1 ; CMD2` shows two commands, one after the other
    <!-- output-loose: CMD -->   the same, for output that depends on timing (scheduler logs):
                                 `--check` only checks that it is there

Outputs are written as they came, except for what belongs to this machine and not to Orchestra:
the scratch home becomes /home/alice, the repository /home/alice/orchestra, the host name node1.

    python scripts/docs_outputs.py            # run and rewrite the pages
    python scripts/docs_outputs.py --check    # run and compare (digits and spacing aside); exit 1
                                              # naming the blocks that differ
    --scratch DIR                             # keep the session there (the tests look at it)
"""
from __future__ import annotations

import argparse
import difflib
import fcntl
import os
import pty
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", "docs/user-guide.md"]  # the order the session runs them in
COLUMNS = 80
USER = "alice"
SHOWN_HOME = f"/home/{USER}"
SHOWN_ROOT = f"/home/{USER}/orchestra"
SHOWN_HOST = "node1"
SEPARATOR = " ; "  # between the commands of one output block
TIMEOUT_SECONDS = 600  # one command; the tutorial's jobs take well under a second each

MARK = re.compile(
    r"<!-- (?P<kind>run|output|output-loose)(?:: (?P<cmd>.*?))? -->\n"
    r"(?P<body>```[^\n]*\n(?:.*?\n)??```\n)"
    r"(?(cmd)<!-- /output -->\n|)",
    re.DOTALL,
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[()][A-Z0-9]")


@dataclass
class Block:
    page: str
    kind: str  # run | output | output-loose
    cmd: str | None
    start: int
    end: int
    body: str  # the fenced block as it is in the page


def blocks(page: str, text: str) -> list[Block]:
    """The marked blocks of a page, in document order."""
    found = []
    for m in MARK.finditer(text):
        if m.group("kind") != "run" and not m.group("cmd"):
            raise SystemExit(f"{page}: an output marker names no command")
        found.append(Block(page, m.group("kind"), m.group("cmd"), m.start(), m.end(), m.group("body")))
    return found


class Session:
    """One user's shell session in a scratch directory: the environment and the current directory."""

    def __init__(self, scratch: Path) -> None:
        self.home = scratch / "home" / USER
        self.home.mkdir(parents=True, exist_ok=True)
        self.cwd = ROOT
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHESTRA_", "PYTEST_", "COV_"))}
        bin_dir = str(Path(sys.executable).parent)
        env.update(HOME=str(self.home), USER=USER, LOGNAME=USER, COLUMNS=str(COLUMNS), LINES="50",
                   TERM="xterm-256color", NO_COLOR="1", PYTHONUNBUFFERED="1",
                   PATH=os.pathsep.join([bin_dir, str(ROOT / "scripts"), env.get("PATH", "/usr/bin:/bin")]))
        self.env = env

    def run_block(self, block: Block) -> None:
        """A `<!-- run -->` block: as written, stopping at the first failing command."""
        code = "\n".join(block.body.splitlines()[1:-1])
        cwd_file = self.home.parent / ".cwd"
        script = f"set -e\n{code}\nprintf '%s' \"$PWD\" > {cwd_file}\n"
        done = subprocess.run(["bash", "-c", script], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise SystemExit(f"{block.page}: this block failed (exit {done.returncode}):\n{code}\n"
                             f"{done.stdout}{done.stderr}")
        self.cwd = Path(cwd_file.read_text())

    def output_of(self, block: Block) -> str:
        """The block as a user sees it at an 80-column terminal: each of its commands (separated
        by ` ; ` in the marker) as `$ CMD`, followed by what it printed."""
        assert block.cmd is not None
        shown = []
        for cmd in block.cmd.split(SEPARATOR):
            output = self.typed(cmd, block.page)
            shown.append(prompt(cmd) + ("\n" + output if output else ""))
        return "\n".join(shown)

    def typed(self, cmd: str, page: str) -> str:
        """What one command prints on a terminal (a pseudo-terminal: tables, not tab-separated text)."""
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, COLUMNS, 0, 0))
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=slave, stderr=slave, start_new_session=True)
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)
        code = proc.wait(timeout=TIMEOUT_SECONDS)
        text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n").replace("\r", "")
        if code != 0:
            raise SystemExit(f"{page}: `{cmd}` failed (exit {code}):\n{text}")
        return self.shown(text)

    def shown(self, text: str) -> str:
        """Replace what belongs to this machine, not to Orchestra (see the module's docstring)."""
        for real, shown in sorted([(str(self.home), SHOWN_HOME), (str(ROOT), SHOWN_ROOT)],
                                  key=lambda pair: -len(pair[0])):
            text = text.replace(real, shown)
        host = socket.gethostname()
        if len(host) >= 2:  # only where a host name stands: a table cell, a field, host:pid
            text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?=[\s│┃|:]|$)", SHOWN_HOST, text, flags=re.MULTILINE)
        return "\n".join(line.rstrip() for line in text.rstrip("\n").splitlines())


def prompt(cmd: str) -> str:
    """`$ CMD`, folded with ` \\` before an option (kept with its value) so that it fits 80 columns."""
    chunks: list[str] = []  # the command with its subcommands, then each option with its value
    for word in _words(cmd):
        last = chunks[-1] if chunks else ""
        if chunks and not word.startswith("-") and (not last.startswith("-") or " " not in last):
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    lines, current = [], "$ " + chunks[0]
    for chunk in chunks[1:]:
        if len(current) + 1 + len(chunk) > COLUMNS - 2:
            lines.append(current + " \\")
            current = "    " + chunk
        else:
            current += " " + chunk
    return "\n".join(lines + [current])


def _words(cmd: str) -> list[str]:
    """Split on spaces outside quotes (the command is shown as typed, quotes included)."""
    words, current, quote = [], "", ""
    for ch in cmd:
        if quote:
            current += ch
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            current += ch
            quote = ch
        elif ch == " ":
            if current:
                words.append(current)
            current = ""
        else:
            current += ch
    return words + ([current] if current else [])


def fenced(shown: str) -> str:
    return f"```text\n{shown}\n```\n"


def normal(text: str) -> str:
    """What must not change between two runs: the words, not digits, hex tokens or spacing."""
    text = re.sub(r"\b[0-9a-f]{8,}\b", "<hex>", text)  # tokens: a scheduler's, an installation's
    text = re.sub(r"\d+", "0", text)
    text = re.sub(r"[─━═]+", "─", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def run(scratch: Path, verbose: bool = False) -> dict[str, str]:
    """Run every page's blocks in one session; return each page's text with the new outputs."""
    session = Session(scratch)
    pages = {}
    for page in PAGES:
        text = (ROOT / page).read_text(encoding="utf-8")
        pieces, last = [], 0
        for block in blocks(page, text):
            started = time.monotonic()
            output = session.run_block(block) if block.kind == "run" else session.output_of(block)
            if verbose:
                print(f"{page}: {block.cmd or block.body.splitlines()[1]} ({time.monotonic() - started:.1f} s)",
                      file=sys.stderr, flush=True)
            if block.kind == "run":
                continue
            marker = f"<!-- {block.kind}: {block.cmd} -->\n"
            pieces += [text[last:block.start], marker, fenced(output), "<!-- /output -->\n"]
            last = block.end
        pages[page] = "".join(pieces) + text[last:]
    return pages


def differences(new_pages: dict[str, str]) -> list[str]:
    """The output blocks whose words differ between the pages and this run."""
    problems = []
    for page, new_text in new_pages.items():
        old = [b for b in blocks(page, (ROOT / page).read_text(encoding="utf-8")) if b.kind != "run"]
        new = [b for b in blocks(page, new_text) if b.kind != "run"]
        for o, n in zip(old, new):
            if o.kind == "output-loose":
                if len(o.body.splitlines()) < 3:
                    problems.append(f"{page}: the output of `{o.cmd}` is empty")
            elif normal(o.body) != normal(n.body):
                diff = "\n".join(difflib.unified_diff(o.body.splitlines(), n.body.splitlines(), "page", "run",
                                                      lineterm="", n=1))
                problems.append(f"{page}: the output of `{o.cmd}` differs:\n{diff}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the pages instead of writing them")
    parser.add_argument("--scratch", type=Path, help="run the session there and keep it (default: a temp dir)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what runs and how long it took")
    args = parser.parse_args(argv)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="orchestra-docs-"))
    try:
        new_pages = run(scratch, args.verbose)
        if args.check:
            problems = differences(new_pages)
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                print(f"{len(problems)} output block(s) differ: run python scripts/docs_outputs.py", file=sys.stderr)
                return 1
            print(f"docs outputs up to date ({', '.join(PAGES)})")
            return 0
        for page, text in new_pages.items():
            if (ROOT / page).read_text(encoding="utf-8") != text:
                (ROOT / page).write_text(text, encoding="utf-8")
                print(f"wrote {page}")
        return 0
    finally:
        if args.scratch is None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
