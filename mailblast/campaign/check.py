"""The commands that send nothing: check, preview and the dry run, and the check pass that `send` shares.

recipients (CSV rows) -> compose (message bytes); sending itself is in campaign.py.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import time
import webbrowser
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.text import Text

from mailblast import display
from mailblast.campaign import journal, report, suppression_db, testsend
from mailblast.campaign.signing_key import key_path, load_key
from mailblast.campaign.suppress import SuppressionList, load_suppression
from mailblast.config import Settings
from mailblast.errors import ConfigError, InputError, did_you_mean
from mailblast.message import unsubscribe
from mailblast.message.compose import (
    ADDRESS_HEADERS,
    GMAIL_CLIPS_AT,
    RESERVED_HEADERS,
    ComposedMessage,
    Prepared,
    RowError,
    Template,
    check_address_header,
    prepare,
    settle,
    unknown_name_text,
)
from mailblast.message.recipients import Recipient, RecipientsFile, RowProblem, RowResult
from mailblast.message.worker import ComposeWorker, batches
from mailblast.smtp.credentials import check_sign_in_settings
from mailblast.smtp.urls import parse_smtp_url

if TYPE_CHECKING:
    from mailblast.message.dkim_sign import DkimKey


@dataclass
class Inputs:
    recipients: RecipientsFile
    template: Template
    suppressed: SuppressionList | None = None  # addresses never to mail

    def is_suppressed(self, recipient: Recipient) -> bool:
        return self.suppressed is not None and recipient.address in self.suppressed

    def close(self) -> None:
        if self.suppressed is not None:
            self.suppressed.close()


@dataclass
class ScanTally:
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    duplicates: int = 0
    empty: int = 0
    suppressed: int = 0
    bad_rows: int = 0  # invalid because of their own values, not the template's
    faulty_templates: tuple[str, ...] = ()
    blank_lines: int = 0  # not rows: skipped, and said
    problems: list[dict[str, Any]] = field(default_factory=list)  # for --json: every one printed

    def fix_hint(self) -> str:
        to_fix = [*self.faulty_templates, *(["the rows above"] if self.bad_rows else [])]
        return f"fix {' and '.join(to_fix)}, then run the command again; nothing was sent"

    def as_dict(self, *, suppression: bool = False) -> dict[str, int]:
        """The counts to show; ``suppressed`` only when a suppression list was given."""
        counts = {
            "rows": self.rows,
            "valid": self.valid,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "empty": self.empty,
            "suppressed": self.suppressed,
            "blank_lines": self.blank_lines,
        }
        if not suppression:
            del counts["suppressed"]
        return counts


def load_inputs(settings: Settings, recipients_path: Path) -> Inputs:
    if settings.template is None:
        raise ConfigError("no template given", "pass --template PATH, or set template in mailblast.toml")
    recipients = RecipientsFile(
        recipients_path,
        encoding=settings.encoding,
        delimiter=settings.delimiter,
        email_column=settings.email_column,
    )
    if settings.sender is not None:
        _check_sender(settings)
    suppressed = load_suppression(settings.suppress)
    try:
        template = _template(settings, recipients_path, suppressed)
    except BaseException:
        if suppressed is not None:
            suppressed.close()
        raise
    return Inputs(recipients, template, suppressed)


def _template(settings: Settings, recipients_path: Path, suppressed: SuppressionList | None) -> Template:
    assert settings.template is not None
    return Template(
        settings.template,
        default_from=settings.sender,
        attachments_dir=settings.attachments_dir,
        max_attachments_mb=settings.attachments_max_mb,
        sandbox=settings.sandbox,
        unsubscribe_url=settings.unsubscribe_url,
        unsubscribe_mailto=settings.unsubscribe_mailto,
        dkim=_dkim_key(settings),
        inline_css=settings.inline_css,
        list_id=settings.list_id,
        feedback_id=settings.feedback_id,
        kept=kept_files(settings, recipients_path),
        test_to=settings.test_to,
        signing=_signing(settings),
        return_path=settings.return_path,
        suppressed=suppressed.db_path if suppressed is not None else None,
    )


def _signing(settings: Settings) -> unsubscribe.Signing | None:
    """The key and campaign tag for {{ unsubscribe_token }} and VERP, when the settings use them."""
    links = f"{settings.unsubscribe_url or ''} {settings.unsubscribe_mailto or ''}"
    if settings.return_path is None and "unsubscribe_token" not in links:
        return None
    assert settings.template is not None
    # the campaign's tag is filled in at compose, from the journal's identity of the campaign
    return unsubscribe.Signing(load_key(), "", settings.test_to)  # a test send's: the test address


CHECK_BATCH = 256  # rows a worker process renders at a time in the check pass
CHECK_IN_WORKERS_FROM = 1024 * 1024  # bytes (some 15,000 rows): below, workers start slower than it ends
DRY_RUN_IN_WORKERS_FROM = 64 * 1024  # bytes (about a thousand rows): building costs five times checking
KNOWN_HEADERS = (
    *ADDRESS_HEADERS, "subject", "attachment", "sender", "list-unsubscribe", "list-unsubscribe-post",
    "list-id", "precedence", "importance", "priority", "in-reply-to", "references", "keywords",
    "comments", "organization", "auto-submitted", "content-language", "feedback-id", "preheader",
    *RESERVED_HEADERS,
)  # fmt: skip
_HEADER_NAME = re.compile(r"^([!-9;-~]+)[ \t]*:", re.MULTILINE)  # a name written out, before its colon
_RESERVED_SUFFIXES = ("test", "local", "internal", "localhost", "invalid", "example", "home.arpa")


def kept_files(settings: Settings, recipients_path: Path) -> dict[Path, str]:
    """The files of this campaign that mailblast keeps for itself: a row may never attach them."""
    kept: dict[Path, str] = {
        recipients_path: "the recipients file",
        journal.default_path(recipients_path): "the campaign journal",
        report.default_report_path(recipients_path): "the report of recipients not sent",
    }
    if settings.config_file is not None:
        kept[settings.config_file] = "the settings file"
    if settings.journal is not None:
        kept[settings.journal] = "the campaign journal"
    if settings.report is not None:
        kept[settings.report] = "the report of recipients not sent"
    if settings.dkim_private_key is not None:
        kept[settings.dkim_private_key] = "the DKIM private key"
    for path in settings.suppress:
        kept[path] = "a suppression list"
    kept[suppression_db.default_path()] = "the shared suppression list"
    kept[key_path()] = "the key that signs unsubscribe links"
    return kept


def _dkim_key(settings: Settings) -> DkimKey | None:
    """[dkim]'s key, loaded and checked now: a bad key stops the run before anything is sent."""
    given = {
        "domain": settings.dkim_domain,
        "selector": settings.dkim_selector,
        "private_key": settings.dkim_private_key,
    }
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        raise ConfigError(
            f"[dkim] needs domain, selector and private_key; {', '.join(missing)} is missing",
            "set all three in the [dkim] table of mailblast.toml",
        )
    from mailblast.message.dkim_sign import load_key  # only then: dkimpy takes a while to import

    assert settings.dkim_domain and settings.dkim_selector and settings.dkim_private_key
    return load_key(settings.dkim_domain, settings.dkim_selector, settings.dkim_private_key)


def aligned(from_domain: str, signing_domain: str) -> bool:
    """DMARC's relaxed alignment, approximated without the public suffix list: the same domain,
    or one a subdomain of the other (news.example.com and example.com)."""
    a, b = from_domain.lower().rstrip("."), signing_domain.lower().rstrip(".")
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def template_warnings(template: Template) -> list[str]:
    """What in the template is probably a mistake but not an error: a missing Subject, a header
    name that is a typo of a known one."""
    options = template.options
    warnings = unsubscribe.warnings(
        template.name, template.header_source, options["unsubscribe_url"], options["unsubscribe_mailto"]
    )
    names = [(m.group(1), m.start()) for m in _HEADER_NAME.finditer(template.header_source)]
    if template.dkim is not None:
        from mailblast.message.dkim_sign import exposed  # loaded already, as the key is

        warnings.extend(w for w in [exposed(template.dkim.path)] if w)
    written = {name.lower() for name, _ in names}
    if "subject" not in written:
        warnings.append(f"{template.name}: no Subject: header, so every message goes out without a subject")
    if "preheader" in written and template.kind == "text":
        warnings.append(
            f"{template.name}: Preheader: is hidden text at the top of an HTML part; this plain-text "
            "message has none, so it is left out"
        )
    for name, at in names:
        if name.lower() in KNOWN_HEADERS or name.lower().startswith("x-"):
            continue
        guess = did_you_mean(name, KNOWN_HEADERS)
        if guess is not None:
            line = template.header_source.count("\n", 0, at) + 1
            proper = "-".join(part.capitalize() for part in guess.split("-"))
            warnings.append(f"{template.name}, line {line}: unknown header {name}:, did you mean {proper}:?")
    return warnings


def reserved_domain(domain: str) -> bool:
    """A name reserved for tests or private networks (RFC 2606, 6761, 6762): only a private relay
    delivers there."""
    labels = domain.lower().rstrip(".").split(".")
    name = ".".join(labels)
    return (
        name.endswith(tuple(f".{s}" for s in _RESERVED_SUFFIXES))
        or name in _RESERVED_SUFFIXES
        or (len(labels) >= 2 and labels[-2] == "example")
    )


def check_smtp_settings(settings: Settings) -> str | None:
    """The [smtp] settings checked as send would (numbers are checked when loading); a line for check."""
    target = parse_smtp_url(settings.smtp_url) if settings.smtp_url else None
    if target is None:
        return None
    pace = f"at most {settings.rate}" if settings.rate else "no rate limit"
    return f"server: {target.display()}, {pace}, {settings.connections} connection(s)"


def check_send_settings(settings: Settings) -> None:
    """Everything `send` checks before it sends, but no secret read and no connection made: the
    server URL and rate, each relay's, the sign-in settings, the test-send options and --limit."""
    check_smtp_settings(settings)
    for relay in settings.relays:  # their rates were parsed with the settings (config.Pace)
        parse_smtp_url(relay.url)
    if settings.smtp_url:
        check_sign_in_settings(
            parse_smtp_url(settings.smtp_url).username,
            method=settings.auth,
            password_command=settings.password_command,
            token_command=settings.oauth_token_command,
        )
    testsend.address_of(settings)
    if settings.limit is not None and settings.limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {settings.limit}")


def _check_sender(settings: Settings) -> None:
    """A bad sender from the config is one error up front, not one per row."""
    assert settings.sender is not None
    try:
        check_address_header("From", settings.sender)
    except RowError as e:
        where = f"from in {settings.config_file} (or --from)" if settings.config_file else "--from"
        raise ConfigError(f"the sender is not valid: {e.message}", f"fix {where}") from None


def scan(
    inputs: Inputs,
    settings: Settings,
    console: Console,
    on_message: Callable[[ComposedMessage], None] | None = None,
    on_valid: Callable[[Recipient], None] | None = None,
    on_suppressed: Callable[[Recipient], None] | None = None,
    *,
    worker: ComposeWorker,
    on_invalid: Callable[[RowResult], None] | None = None,
    keep_problems: bool = False,
) -> ScanTally:
    """Check every row (and build its message for ``on_message``), print every problem, count.

    A suppressed row is counted and given to ``on_suppressed``, never rendered. ``worker``
    renders the rows (in its processes, if it has them).
    """
    for warning in [*inputs.recipients.format.warnings, *template_warnings(inputs.template)]:
        display.print_warning(console, warning)
    fmt = inputs.recipients.format
    for column in inputs.template.shadowed_columns(fmt.header, fmt.address_column):
        display.print_warning(
            console,
            f'{inputs.recipients.name}: column "{column}" has the name of a built-in template variable; '
            f'the template reaches it as row["{column}"]',
        )
    if inputs.suppressed is not None:
        for warning in inputs.suppressed.warnings:
            display.print_warning(console, warning)
        console.print(inputs.suppressed.describe(), highlight=False)
    tally = ScanTally()
    faults = TemplateFaults()
    reserved: dict[str, list[int]] = {}  # domain -> [first row, count]
    dkim = inputs.template.dkim
    misaligned: dict[str, list[int]] = {}  # From domain -> [first row, count]
    clipped: list[int] = []  # [first row, its HTML's size, count] of HTML parts Gmail clips
    size = inputs.recipients.size
    with display.file_progress(console, "checking rows", size, quiet=settings.quiet) as progress:
        for result, prepared in _prepared(inputs, settings, on_message is not None, worker):
            tally.rows += 1
            if prepared is None:
                assert result.recipient is not None
                tally.suppressed += 1
                if on_suppressed is not None:
                    on_suppressed(result.recipient)
                continue
            for problem in result.problems:
                if problem.template is not None:
                    faults.add(problem)
                else:
                    display.print_problem(console, problem)
                    if keep_problems:
                        tally.problems.append(_problem_facts(problem))
            if prepared.ok:
                tally.valid += 1
                recipient = result.recipient
                if recipient is not None and reserved_domain(domain := recipient.address.rpartition("@")[2]):
                    reserved.setdefault(domain.lower(), [recipient.row, 0])[1] += 1
                sender_domain = prepared.sender.rpartition("@")[2]
                if dkim is not None and sender_domain and not aligned(sender_domain, dkim.domain):
                    misaligned.setdefault(sender_domain.lower(), [result.row, 0])[1] += 1
                if prepared.html_bytes > GMAIL_CLIPS_AT:
                    clipped = clipped or [result.row, prepared.html_bytes, 0]
                    clipped[2] += 1
                if on_valid is not None and result.recipient is not None:
                    on_valid(result.recipient)
                if on_message is not None and prepared.message is not None:
                    on_message(prepared.message)
            elif result.duplicate_of is not None:
                tally.duplicates += 1
            elif any(p.is_error for p in result.problems):
                tally.invalid += 1
                tally.bad_rows += any(p.is_error and p.template is None for p in result.problems)
                if on_invalid is not None:
                    on_invalid(result)
            else:
                tally.empty += 1
            if progress is not None and tally.rows % 512 == 0:
                progress.update(progress.task_ids[0], completed=inputs.recipients.bytes_read)
        if progress is not None:
            progress.update(progress.task_ids[0], completed=size)  # the bar ends full
    if blank := inputs.recipients.blank_lines:
        lines = ", ".join(map(str, inputs.recipients.first_blank_lines)) + (", ..." if blank > 5 else "")
        display.print_warning(
            console, f"{inputs.recipients.name}: {blank:,} blank line(s) skipped (line {lines})"
        )
        tally.blank_lines = blank
    for domain, (first, count) in reserved.items():
        display.print_warning(
            console,
            f"{count:,} address(es) at {domain} (the first in row {first}), a name reserved for tests and "
            "private networks: sent only if your server relays it",
        )
    for domain, (first, count) in misaligned.items():
        assert dkim is not None
        display.print_warning(
            console,
            f"{count:,} message(s) from {domain} (the first in row {first}) are signed for {dkim.domain}, "
            "which does not align with it: DMARC wants the From domain and the [dkim] domain to be the "
            "same or one a subdomain of the other",
        )
    if clipped:
        first, html_bytes, count = clipped
        display.print_warning(
            console,
            f"{count:,} message(s) have an HTML part over {GMAIL_CLIPS_AT // 1024} KB (the first, row "
            f"{first}, {display.human_size(html_bytes)}): Gmail clips it there and hides the rest behind "
            '"[Message clipped]", the unsubscribe link with it',
        )
    for problem, count in faults.found.values():
        display.print_template_fault(console, problem, count, tally.rows)
        tally.problems.append({**_problem_facts(problem), "rows": count})
    _name_every_template_fault(inputs, console, tally, faults)
    tally.faulty_templates = tuple(dict.fromkeys(p.template for p, _ in faults.found.values() if p.template))
    if tally.rows == 0:
        raise InputError(
            f"{inputs.recipients.name}: the file has a header but no rows",
            "add one row per recipient below the header line",
        )
    return tally


def _name_every_template_fault(
    inputs: Inputs, console: Console, tally: ScanTally, faults: TemplateFaults
) -> None:
    """Every fault written in the template, not only the first each row stopped at: those of its
    headers, and every name it reads that no column has (an error when the template failed
    already, else a warning: it may sit in a branch no row took)."""
    said = " ".join(p.message for p, _ in faults.found.values())
    template = inputs.template
    for fault in template.written_faults() if faults.found else []:
        if fault not in said:  # one a row did not get to, stopped by an earlier fault
            problem = RowProblem(inputs.recipients.name, 1, 2, None, fault, True, template.name)
            console.print(Text.assemble(("error: ", "bold red"), str(problem)), soft_wrap=True)
            tally.problems.append({**_problem_facts(problem), "rows": 0})
    columns = list(inputs.recipients.format.header)
    for name in template.names_not_in(inputs.recipients.format.header):
        if f'uses "{name}"' in said:
            continue
        problem = RowProblem(
            inputs.recipients.name,
            1,
            2,
            None,
            unknown_name_text(name, columns),
            bool(faults.found),
            template.name,
        )
        if faults.found:
            console.print(Text.assemble(("error: ", "bold red"), str(problem)), soft_wrap=True)
        else:
            display.print_warning(console, f"{problem} (a branch no row took?)")
        tally.problems.append({**_problem_facts(problem), "rows": 0})


def _problem_facts(problem: RowProblem) -> dict[str, Any]:
    """A problem as --json gives it: where (file, row, line, column), what, and how bad."""
    return {
        "file": problem.template or problem.file,
        "row": problem.row,
        "line": problem.line,
        "column": problem.column,
        "message": problem.message,
        "severity": "error" if problem.is_error else "warning",
        "rows": 1,
    }


def _prepared(
    inputs: Inputs, settings: Settings, build: bool, worker: ComposeWorker
) -> Iterator[tuple[RowResult, Prepared | None]]:
    """Every row in file order, rendered (and built, with ``build``) by ``worker``; a suppressed
    row comes with None: it is never rendered."""
    name = inputs.recipients.name
    rows = inputs.recipients.rows(allow_duplicates=settings.allow_duplicates)

    def suppressed(result: RowResult) -> bool:
        return result.recipient is not None and inputs.is_suppressed(result.recipient)

    size = worker.batch if build else CHECK_BATCH
    # each row with whether it is suppressed: a lookup in the list on disk, made once a row
    marked = ([(r, suppressed(r)) for r in batch] for batch in batches(rows, size))
    work = ((m, [r.recipient for r, out in m if r.recipient is not None and not out]) for m in marked)
    for batch, checked in worker.compose_batches(work) if build else worker.check_batches(work):
        outcomes = iter(checked)
        for result, out in batch:
            if out:
                yield result, None
            elif result.recipient is None:
                yield result, Prepared(result, None, False)  # it read badly: its problems are found
            else:
                yield result, settle(name, result, next(outcomes))


class TemplateFaults:
    """Problems whose cause is written in the template: the same on every row, so kept to show once."""

    def __init__(self) -> None:
        self.found: dict[tuple[str | None, str], tuple[RowProblem, int]] = {}

    def add(self, problem: RowProblem) -> None:
        key = (problem.template, problem.message)
        first, count = self.found.get(key, (problem, 0))
        self.found[key] = (first, count + 1)


def run_check(
    settings: Settings, recipients_path: Path, console: Console, facts: dict[str, Any] | None = None
) -> int:
    server = check_smtp_settings(settings)
    inputs = load_inputs(settings, recipients_path)
    console.print(describe_format(inputs.recipients), highlight=False, soft_wrap=True)
    if server is not None:
        console.print(server, highlight=False, soft_wrap=True)
    if (key := inputs.template.dkim) is not None:
        console.print(
            f"DKIM: signing for {key.domain} with selector {key.selector} ({key.algorithm}, {key.path})",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"text part: {inputs.template.text_part}", highlight=False, soft_wrap=True)
    started = time.monotonic()
    # A worker process for each core renders the rows of a large file; starting them takes a while.
    with ComposeWorker(inputs.template, in_worker=inputs.recipients.size >= CHECK_IN_WORKERS_FROM) as worker:
        tally = scan(inputs, settings, console, worker=worker, keep_problems=facts is not None)
    counts = tally.as_dict(suppression=inputs.suppressed is not None)
    display.print_counts(console, f"check {inputs.recipients.name}", _shown(counts))
    if facts is not None:
        fmt = inputs.recipients.format
        facts.update(
            rows=tally.as_dict(suppression=True),
            encoding=fmt.encoding,
            delimiter=fmt.delimiter,
            email_column=fmt.address_column,
            elapsed_seconds=round(time.monotonic() - started, 3),
            problems=tally.problems,
        )
        if tally.invalid:
            facts["error"] = {"message": f"{tally.invalid:,} invalid row(s)", "hint": tally.fix_hint()}
    return verdict_of_scan(console, tally)


def _shown(counts: dict[str, int]) -> dict[str, int]:
    return {name.replace("_", " "): n for name, n in counts.items()}


def describe_format(recipients: RecipientsFile) -> str:
    """What was found (or given) about the file: encoding, separator, address column."""
    fmt = recipients.format
    encoding = {"utf-8-sig": "UTF-8 with a byte order mark", "utf-8": "UTF-8"}.get(fmt.encoding, fmt.encoding)
    separator = {",": "commas", ";": "semicolons", "\t": "tabs", "|": "bars"}.get(fmt.delimiter)
    return (
        f"{recipients.name}: {encoding}, separated by {separator or repr(fmt.delimiter)}, "
        f'addresses in column "{fmt.address_column}"'
    )


def verdict_of_scan(console: Console, tally: ScanTally) -> int:
    if tally.invalid:
        console.print(
            Text.assemble(
                (f"{tally.invalid:,} invalid row(s). ", "bold red"),
                display.printable(f"Hint: {tally.fix_hint()}"),
            ),
            soft_wrap=True,
        )
        return InputError.exit_code
    return 0


def run_preview(
    settings: Settings, recipients_path: Path, row: int, console: Console, *, open_browser: bool = False
) -> int:
    if row < 1:
        raise ConfigError(f"--row must be 1 or more, not {row}", "row 1 is the first row after the header")
    inputs = load_inputs(settings, recipients_path)
    for result in inputs.recipients.rows(allow_duplicates=True):
        if result.row != row:
            continue  # read, not rendered: previewing row 900,000 need not build the ones before it
        if result.recipient is not None and inputs.is_suppressed(result.recipient):
            display.print_warning(
                console, f"row {row} ({result.recipient.address}) is suppressed: send leaves it out"
            )
        prepared = prepare(inputs.recipients.name, result, inputs.template)
        for problem in prepared.row.problems:
            display.print_problem(console, problem)
        if prepared.message is None:
            return InputError.exit_code
        display.show_message(console, prepared.message, inputs.template.text_part)
        if open_browser:
            open_in_browser(prepared.message, console)
        return 0
    raise InputError(
        f"{inputs.recipients.name} has no row {row}",
        "rows are counted from 1, the first row after the header; blank lines are not counted",
    )


def open_in_browser(message: ComposedMessage, console: Console) -> Path:
    """Write the message's HTML part to a temporary file and open it in the default browser."""
    parsed = message.parsed()
    part = parsed.get_body(("html",))
    if part is not None:
        page = part.get_content()
    else:
        plain = parsed.get_body(("plain",))
        text = plain.get_content() if plain is not None else ""
        page = f"<pre>{html.escape(text)}</pre>"
        console.print("the message has no HTML part: the browser shows its plain text")
    fd, name = tempfile.mkstemp(prefix=f"mailblast-row{message.recipient.row}-", suffix=".html")
    path = Path(name)
    # With a BOM, browsers read the file as UTF-8 whatever the markup says.
    with os.fdopen(fd, "w", encoding="utf-8-sig") as f:
        f.write(page)
    if webbrowser.open(path.as_uri()):
        console.print(f"opened in the browser: {path}", soft_wrap=True)
    else:
        console.print(f"no browser available; the HTML part is in {path}", soft_wrap=True)
    return path


def eml_name(message: ComposedMessage) -> str:
    safe = re.sub(r"[^\w@.+-]", "_", message.recipient.address, flags=re.ASCII)
    return f"{message.recipient.row:06d}-{safe}.eml"


def run_dry_run(settings: Settings, recipients_path: Path, out: Path | None, console: Console) -> int:
    """Build every message exactly as `send` would, and send nothing."""
    check_send_settings(settings)
    inputs = load_inputs(settings, recipients_path)
    if out is not None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot create the folder: {e.strerror}") from None

    def keep(message: ComposedMessage) -> None:
        if out is not None:
            (out / eml_name(message)).write_bytes(message.data)

    large = inputs.recipients.size >= DRY_RUN_IN_WORKERS_FROM
    with ComposeWorker(inputs.template, in_worker=large) as worker:
        tally = scan(inputs, settings, console, keep, worker=worker)
    counts = tally.as_dict(suppression=inputs.suppressed is not None)
    display.print_counts(console, f"dry run of {inputs.recipients.name}: nothing sent", _shown(counts))
    if out is not None:
        console.print(f"wrote {tally.valid} message(s) to {out}/ as .eml files", highlight=False)
    return verdict_of_scan(console, tally)
