"""The command line: parse options, call a command runner, turn errors into one line and an exit code."""

from __future__ import annotations

import copy
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from mailblast import __version__, init
from mailblast.campaign.check import run_check, run_dry_run, run_preview
from mailblast.campaign.send import run_send
from mailblast.campaign.status import run_report, run_status
from mailblast.config import Settings, load_settings
from mailblast.display import json_text, make_console, printable
from mailblast.errors import ConfigError, InputError, MailblastError, StoppedError
from mailblast.server import capture, profiles
from mailblast.smtp.credentials import PASSWORD_ENV
from mailblast.smtp.urls import parse_rate

# Panels of `send --help`; the options without one are under "Options".
SMTP, PACE, RERUN = "SMTP server", "Rate and connections", "Journal and re-runs"
TEST_SEND, REHEARSE = "Test send", "Rehearse a provider"
CSV, MESSAGE = "Recipients file", "Message"

app = typer.Typer(
    name="mailblast",
    help="Send one message per CSV row from a Jinja template, inside your provider's rate limit.\n\n"
    "Example: mailblast check people.csv -t welcome.md, then mailblast send people.csv -t welcome.md "
    "--smtp smtp+starttls://me@smtp.example.com:587 --rate 3/s",
    no_args_is_help=True,
    rich_markup_mode="rich",  # so help text escapes its brackets: \\[default: 2]
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Recipients = Annotated[
    Path, typer.Argument(help="The recipients CSV: a header line, then one row per recipient.")
]
TemplateOpt = Annotated[
    Path | None,
    typer.Option(
        "--template",
        "-t",
        rich_help_panel=MESSAGE,
        help="The message template (.txt, .html or .md, optionally .j2).",
    ),
]
FromOpt = Annotated[
    str | None,
    typer.Option("--from", rich_help_panel=MESSAGE, help="Sender when the template has no From: header."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Settings file. \\[default: ./mailblast.toml if present]"),
]
EncodingOpt = Annotated[
    str | None,
    typer.Option(
        "--encoding", rich_help_panel=CSV, help="The CSV's encoding. \\[default: detected, UTF-8 first]"
    ),
]
DelimiterOpt = Annotated[
    str | None,
    typer.Option(
        "--delimiter", rich_help_panel=CSV, help="The CSV's separator. \\[default: sniffed from , ; or tab]"
    ),
]
EmailColumnOpt = Annotated[
    str | None,
    typer.Option(
        "--email-column", rich_help_panel=CSV, help="The column with addresses. \\[default: one named email]"
    ),
]
JournalOpt = Annotated[
    Path | None,
    typer.Option(
        "--journal",
        rich_help_panel=RERUN,
        help="The campaign journal. \\[default: RECIPIENTS.csv.mailblast.sqlite beside it]",
    ),
]
SuppressOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--suppress",
        rich_help_panel=CSV,
        help="Never mail the addresses in this file: a CSV with an email column, or one address a line. "
        "Repeatable; adds to suppress in mailblast.toml.",
    ),
]
AttachmentsDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--attachments-dir",
        rich_help_panel=MESSAGE,
        help="Attachment paths are taken from here. \\[default: the template's folder]",
    ),
]
AttachmentsMaxOpt = Annotated[
    float | None,
    typer.Option(
        "--attachments-max-mb",
        rich_help_panel=MESSAGE,
        help="Most MB of attachments in one message. \\[default: 10]",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON document on standard output (counts, paths, exit code); the rest on stderr.",
    ),
]
CampaignOpt = Annotated[
    str | None,
    typer.Option(
        "--campaign",
        rich_help_panel=RERUN,
        help="The campaign's name: another name starts another campaign in the same journal. "
        "\\[default: campaign in mailblast.toml, else unnamed]",
    ),
]
DuplicatesOpt = Annotated[
    bool | None,
    typer.Option(
        "--allow-duplicates",
        rich_help_panel=CSV,
        help="Send to an address as often as it appears.",
        show_default=False,
    ),
]


def _settings(options: dict[str, Any]) -> Settings:
    """Settings from the config file, overridden by the options the user gave."""
    flags = {k: v for k, v in options.items() if k != "recipients"}
    config = flags.pop("config")
    flags["sender"] = flags.pop("from_", None)
    return load_settings(config, flags)


def _run(
    work: Callable[[Console], int], *, stderr: bool = False, facts: dict[str, Any] | None = None
) -> None:
    """The one place where errors become a message and an exit code.

    With ``facts`` (--json), everything a person reads goes to standard error, and standard
    output gets one JSON document: the facts the command gathered, its exit code and any error.
    """
    console = make_console(stderr=stderr or facts is not None)
    errors = make_console(stderr=True)
    error: MailblastError | None = None
    try:
        code = work(console)
    except MailblastError as e:
        error, code = e, e.exit_code
        errors.print(Text.assemble(("error: ", "bold red"), printable(e.message)), soft_wrap=True)
        if e.hint:
            errors.print(Text.assemble(("hint: ", "bold"), printable(e.hint)), soft_wrap=True)
    except KeyboardInterrupt:
        error, code = StoppedError("interrupted"), StoppedError.exit_code
        errors.print(Text("interrupted", style="bold red"))
    if facts is not None:
        said = facts.pop("error", None)  # bad rows: not an exception, an error all the same
        problem = {"message": error.message, "hint": error.hint} if error is not None else said
        sys.stdout.write(json_text({**facts, "exit_code": code, "error": problem}) + "\n")
    raise typer.Exit(code)


@app.command()
def check(
    recipients: Recipients,
    template: TemplateOpt = None,
    from_: FromOpt = None,
    config: ConfigOpt = None,
    encoding: EncodingOpt = None,
    delimiter: DelimiterOpt = None,
    email_column: EmailColumnOpt = None,
    allow_duplicates: DuplicatesOpt = None,
    suppress: SuppressOpt = None,
    attachments_dir: AttachmentsDirOpt = None,
    attachments_max_mb: AttachmentsMaxOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Read and render every row, send nothing, and report every problem at once.

    Exit 0 when every row is good, 2 otherwise.

    Example: mailblast check people.csv -t welcome.md
    """
    settings = {k: v for k, v in locals().items() if k != "json_output"}
    facts = _facts("check", recipients) if json_output else None
    _run(lambda console: run_check(_settings(settings), recipients, console, facts), facts=facts)


@app.command()
def preview(
    recipients: Recipients,
    template: TemplateOpt = None,
    row: Annotated[
        int, typer.Option("--row", "-r", help="Which row to show; 1 is the first after the header.")
    ] = 1,
    open_browser: Annotated[
        bool, typer.Option("--open", help="Open the HTML part in the default browser too.")
    ] = False,
    from_: FromOpt = None,
    config: ConfigOpt = None,
    encoding: EncodingOpt = None,
    delimiter: DelimiterOpt = None,
    email_column: EmailColumnOpt = None,
    suppress: SuppressOpt = None,
    attachments_dir: AttachmentsDirOpt = None,
    attachments_max_mb: AttachmentsMaxOpt = None,
) -> None:
    """Show the fully rendered message for one row: headers, bodies, attachments.

    Example: mailblast preview people.csv -t welcome.md --row 3
    """
    settings = {k: v for k, v in locals().items() if k not in ("row", "open_browser")}
    _run(
        lambda console: run_preview(_settings(settings), recipients, row, console, open_browser=open_browser)
    )


@app.command()
def send(
    recipients: Recipients,
    template: TemplateOpt = None,
    smtp_url: Annotated[
        str | None,
        typer.Option(
            "--smtp",
            envvar="MAILBLAST_SMTP_URL",
            help="smtp://\\[USER@]HOST\\[:PORT], smtp+starttls://... (port 587) or smtps://... (port 465); "
            "the password comes from MAILBLAST_SMTP_PASSWORD, \\[smtp] password_command or a prompt, "
            "an OAuth2 token from MAILBLAST_SMTP_OAUTH_TOKEN or \\[smtp] oauth_token_command.",
            rich_help_panel=SMTP,
        ),
    ] = None,
    rate: Annotated[
        list[str] | None,
        typer.Option(
            "--rate",
            help="Most messages per period, e.g. 3/s, 180/min, 5/2s; over a minute (500/d, 100/h) it is "
            "the account's quota, kept across runs. Repeat it for several limits at once: "
            "--rate 3/s --rate 500/d. \\[default: none; learn the server's limit from its replies]",
            rich_help_panel=PACE,
        ),
    ] = None,
    connections: Annotated[
        int | None,
        typer.Option("--connections", rich_help_panel=PACE, help="Connections at once. \\[default: 2]"),
    ] = None,
    max_messages: Annotated[
        int | None,
        typer.Option(
            "--max-messages",
            rich_help_panel=PACE,
            help="Messages per connection before reconnecting. \\[default: 100]",
        ),
    ] = None,
    retries: Annotated[
        int | None,
        typer.Option(
            "--retries",
            rich_help_panel=PACE,
            help="Retries of a temporary failure per recipient. \\[default: 5]",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", rich_help_panel=SMTP, help="Seconds to wait for a reply. \\[default: 30]"),
    ] = None,
    pipelining: Annotated[
        bool | None,
        typer.Option(
            "--pipelining/--no-pipelining",
            help="Send each message's commands in one write when the server offers PIPELINING "
            "(on by default; MAILBLAST_PIPELINING=0 turns it off).",
            show_default=False,
        ),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(
            "--auth",
            rich_help_panel=SMTP,
            help="Sign in with login, plain or xoauth2. \\[default: chosen from what the server offers "
            "and what was given]",
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report",
            help="Write the CSV of recipients not sent here. "
            "\\[default: standard output; on a terminal RECIPIENTS.not-sent.csv]",
        ),
    ] = None,
    quiet: Annotated[
        bool | None, typer.Option("--quiet", "-q", help="No progress output.", show_default=False)
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Render and check every message; send nothing.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="With --dry-run: write each message to this folder as .eml.")
    ] = None,
    journal: JournalOpt = None,
    no_journal: Annotated[
        bool | None,
        typer.Option(
            "--no-journal", rich_help_panel=RERUN, help="Keep no journal: a re-run sends everything again."
        ),
    ] = None,
    restart: Annotated[
        bool | None,
        typer.Option(
            "--restart", rich_help_panel=RERUN, help="Forget the journal's campaign and start over."
        ),
    ] = None,
    retry_failed: Annotated[
        bool | None,
        typer.Option(
            "--retry-failed", rich_help_panel=RERUN, help="Send again to recipients that failed for good."
        ),
    ] = None,
    skip_uncertain: Annotated[
        bool | None,
        typer.Option(
            "--skip-uncertain",
            rich_help_panel=RERUN,
            help="Leave out messages in flight when an earlier run died.",
        ),
    ] = None,
    campaign: CampaignOpt = None,
    server_changed: Annotated[
        bool | None,
        typer.Option(
            "--server-changed",
            rich_help_panel=RERUN,
            help="The campaign moved to another server (a provider switched mid-campaign): count the "
            "deliveries to the earlier one as delivered.",
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            rich_help_panel=RERUN,
            help="Send at most this many messages this run; the rest stay pending for the next run.",
        ),
    ] = None,
    skip_invalid: Annotated[
        bool | None,
        typer.Option(
            "--skip-invalid",
            rich_help_panel=CSV,
            help="Send the valid rows and report the invalid ones as not sent (exit 1), instead of "
            "refusing the whole file.",
        ),
    ] = None,
    test_to: Annotated[
        str | None,
        typer.Option(
            "--test-to",
            rich_help_panel=TEST_SEND,
            help="Send the first few messages to this address only, as their recipients would get them; "
            "the journal is not touched.",
        ),
    ] = None,
    test_count: Annotated[
        int | None,
        typer.Option(
            "--test-count",
            rich_help_panel=TEST_SEND,
            help="With --test-to: how many messages. \\[default: 3]",
        ),
    ] = None,
    test_row: Annotated[
        int | None,
        typer.Option(
            "--row", rich_help_panel=TEST_SEND, help="With --test-to: send the message of this row instead."
        ),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait",
            rich_help_panel=PACE,
            help="When the account's quota is used, wait for it instead of stopping.",
        ),
    ] = None,
    outbox: Annotated[
        Path | None,
        typer.Option(
            "--outbox",
            rich_help_panel=SMTP,
            help="Deliver into this Maildir through a local capture server; nothing leaves the machine. "
            "\\[default: ./outbox when no SMTP server is configured]",
        ),
    ] = None,
    from_: FromOpt = None,
    config: ConfigOpt = None,
    encoding: EncodingOpt = None,
    delimiter: DelimiterOpt = None,
    email_column: EmailColumnOpt = None,
    allow_duplicates: DuplicatesOpt = None,
    suppress: SuppressOpt = None,
    attachments_dir: AttachmentsDirOpt = None,
    attachments_max_mb: AttachmentsMaxOpt = None,
    json_output: JsonOpt = False,
) -> None:
    """Send one message per row, inside the rate limit, and report every recipient not sent.

    Exit 0 all delivered, 1 some failed, 2 bad input (nothing sent), 3 stopped early.

    Example: mailblast send people.csv -t welcome.md --smtp smtp+starttls://me@smtp.example.com:587 --rate 3/s
    """
    options = {k: v for k, v in locals().items() if k not in ("dry_run", "out", "json_output")}
    if dry_run and json_output:
        _run(lambda console: _usage("--json does not go with --dry-run", "check --json checks every row"))
    if dry_run:
        _run(lambda console: run_dry_run(_settings(options), recipients, out, console))
    if out is not None:
        _run(lambda console: _usage("--out goes with --dry-run", "add --dry-run to write .eml files"))
    again = shlex.join(["mailblast", *(a for a in sys.argv[1:] if a != "--restart")])
    facts = _facts("send", recipients) if json_output else None
    _run(
        lambda console: run_send(
            _settings(options), recipients, console, _ask_password, sys.stdout, again, facts=facts
        ),
        stderr=True,
        facts=facts,
    )


@app.command()
def status(
    recipients: Recipients,
    template: TemplateOpt = None,
    journal: JournalOpt = None,
    campaign: CampaignOpt = None,
    config: ConfigOpt = None,
    suppressed: Annotated[
        bool, typer.Option("--suppressed", help="List the suppressed addresses, one a line.")
    ] = False,
    smtp_url: Annotated[
        str | None,
        typer.Option("--smtp", envvar="MAILBLAST_SMTP_URL", help="With a --rate quota: the account to show."),
    ] = None,
    rate: Annotated[
        list[str] | None,
        typer.Option("--rate", help="A quota such as 500/d (repeatable): show the account's use of each."),
    ] = None,
    json_output: JsonOpt = False,
) -> None:
    """Show a campaign's progress from its journal: counts, start, rate, failures by reason, quota.

    Example: mailblast status people.csv -t welcome.md
    """
    options = {k: v for k, v in locals().items() if k not in ("suppressed", "json_output")}
    facts = _facts("status", recipients) if json_output else None
    _run(
        lambda console: run_status(
            _settings(options), recipients, console, list_suppressed=suppressed, facts=facts
        ),
        facts=facts,
    )


@app.command()
def report(
    recipients: Recipients,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the CSV here. \\[default: standard output]")
    ] = None,
    template: TemplateOpt = None,
    journal: JournalOpt = None,
    campaign: CampaignOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write the report of recipients not sent, from the journal, as a resendable CSV.

    Example: mailblast report people.csv -t welcome.md -o not-sent.csv
    """
    options = {k: v for k, v in locals().items() if k != "out"}
    _run(
        lambda console: run_report(_settings(options), recipients, out, console, sys.stdout),
        stderr=True,
    )


@app.command()
def serve(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = capture.DEFAULT_PORT,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = capture.LOOPBACK,
    outbox: Annotated[
        Path, typer.Option("--outbox", help="The Maildir that keeps every message.")
    ] = capture.DEFAULT_OUTBOX,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            rich_help_panel=REHEARSE,
            help="At most this many messages per period, e.g. 3/s; above it, Mailtrap's 550 reply.",
        ),
    ] = None,
    max_connections: Annotated[
        int | None,
        typer.Option(
            "--max-connections",
            rich_help_panel=REHEARSE,
            help="Connections at once; above it, a 421 greeting.",
        ),
    ] = None,
    max_messages: Annotated[
        int | None,
        typer.Option("--max-messages", rich_help_panel=REHEARSE, help="Messages per connection; then a 421."),
    ] = None,
    fail_rate: Annotated[
        float,
        typer.Option(
            "--fail-rate",
            rich_help_panel=REHEARSE,
            help="Share of messages refused with a random 451, 0 to 1.",
        ),
    ] = 0.0,
    profile: Annotated[
        str | None,
        typer.Option(
            "--profile",
            rich_help_panel=REHEARSE,
            help="Rehearse a provider's limits with its own replies: "
            + ", ".join(profiles.PROFILES)
            + ". The options above override its figures.",
        ),
    ] = None,
    quota: Annotated[
        int | None,
        typer.Option(
            "--quota",
            rich_help_panel=REHEARSE,
            help="Messages accepted in all; then the quota reply (with --profile: that provider's). "
            "Scales a profile's real quota down for a rehearsal.",
        ),
    ] = None,
) -> None:
    """Run a local SMTP server that keeps every message in a Maildir and sends nothing on.

    Rehearse a provider: mailblast serve --rate 3/s --max-connections 2, or mailblast serve --profile ses
    """

    def work(console: Console) -> int:
        limits = capture.Limits(
            parse_rate(rate) if rate else None, max_connections, max_messages, fail_rate, quota
        )
        if profile is not None:
            limits = profiles.profile_limits(profile, limits)
        return capture.run_serve(host, port, outbox, limits, console)

    _run(work)


@app.command("init")
def init_command(
    folder: Annotated[Path, typer.Argument(help="Where to write the starter (created if missing).")] = Path(),
    template_format: Annotated[
        str, typer.Option("--format", help="The template's format: md, html or txt.")
    ] = "md",
) -> None:
    """Write a working starter: mailblast.toml (every setting), recipients.csv and a template.

    It never overwrites a file. Example: mailblast init newsletter --format html
    """
    _run(lambda console: init.run_init(folder, template_format, console))


@app.command("dkim-keygen")
def dkim_keygen(
    domain: Annotated[str, typer.Argument(help="The domain that signs, as in From: (example.com).")],
    selector: Annotated[str, typer.Argument(help="A name for this key, e.g. mb2026.")],
    key_type: Annotated[str, typer.Option("--type", help="rsa (2048 bits) or ed25519.")] = "rsa",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="The private key's file. \\[default: DOMAIN.SELECTOR.pem in your config folder, "
            "outside the campaign folder]",
        ),
    ] = None,
) -> None:
    """Write a new DKIM private key and print the DNS TXT record to publish; never overwrites."""

    def work(console: Console) -> int:
        # dkimpy is slow to import
        from mailblast.message.dkim_sign import default_key_path, write_new_key, zone_line

        path = out or default_key_path(domain, selector)
        name, value = write_new_key(domain, selector, key_type, path)
        console.print(
            f"wrote the private key to {path} (readable by you only; keep it secret)", soft_wrap=True
        )
        console.print(f"publish this TXT record at {name}:\n\n{value}\n", soft_wrap=True)
        console.print(f"as a zone-file line:\n\n{zone_line(name, value)}\n", soft_wrap=True)
        console.print(
            f'then, in mailblast.toml:\n\n[dkim]\ndomain = "{domain}"\nselector = "{selector}"\n'
            f"private_key = {json.dumps(str(path), ensure_ascii=False)}",
            soft_wrap=True,
        )
        return 0

    _run(work)


@app.command()
def bounces(
    source: Annotated[
        str | None,
        typer.Argument(
            help="A Maildir, an mbox file, or imaps://USER@HOST[:PORT]/FOLDER. "
            "\\[default: \\[bounces] source]"
        ),
    ] = None,
    config: ConfigOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be suppressed; change nothing.")
    ] = False,
    move_to: Annotated[
        str | None,
        typer.Option(
            "--move-to",
            help="Move the bounces, complaints and unsubscribes read into this folder "
            "(a Maildir subfolder, an mbox file beside it, an IMAP folder). \\[default: move nothing]",
        ),
    ] = None,
) -> None:
    """Read bounces, complaints and unsubscribes from a mailbox into the shared suppression list.

    Nothing is deleted; a second run changes nothing. The IMAP password comes from
    MAILBLAST_IMAP_PASSWORD or \\[bounces] password_command, a token from MAILBLAST_IMAP_OAUTH_TOKEN or
    \\[bounces] oauth_token_command.

    Example: mailblast bounces ~/Maildir/.Bounces --dry-run
    """
    from mailblast.campaign.bounces import run_bounces

    def work(console: Console) -> int:
        settings = load_settings(config, {})
        return run_bounces(
            settings,
            source,
            console,
            dry_run=dry_run,
            move_to=move_to,
            ask_password=_prompt_password if sys.stdin.isatty() else None,  # None: an error, not a prompt
        )

    _run(work)


@app.command("unsubscribe-server")
def unsubscribe_server(
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 8025,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (your proxy's upstream).")
    ] = "127.0.0.1",
) -> None:
    """Run the one-click unsubscribe endpoint ({{ unsubscribe_token }} links), behind your https proxy.

    A POST (List-Unsubscribe=One-Click) unsubscribes at once; a GET only shows a button that POSTs.
    Unsubscribes go into the shared suppression list.
    """
    from mailblast.campaign.feedback import run_unsubscribe_server

    _run(lambda console: run_unsubscribe_server(host, port, console))


suppress_app = typer.Typer(
    help="The shared suppression list, used by every send on this machine: add, remove, list, export.",
    no_args_is_help=True,
)
app.add_typer(suppress_app, name="suppress")
Addresses = Annotated[list[str], typer.Argument(help="One or more addresses.")]


@suppress_app.command("add")
def suppress_add(
    addresses: Addresses,
    reason: Annotated[str, typer.Option("--reason", help="Why, as the list shows it.")] = "",
) -> None:
    """Never mail these addresses again, from any campaign."""
    from mailblast.campaign import suppress_commands

    _run(lambda console: suppress_commands.run_add(addresses, reason, console))


@suppress_app.command("remove")
def suppress_remove(addresses: Addresses) -> None:
    """Take these addresses off the shared list: they will be mailed again."""
    from mailblast.campaign import suppress_commands

    _run(lambda console: suppress_commands.run_remove(addresses, console))


@suppress_app.command("list")
def suppress_list() -> None:
    """Show every suppressed address with its reason, source, date and campaign."""
    from mailblast.campaign import suppress_commands

    _run(suppress_commands.run_list)


@suppress_app.command("export")
def suppress_export() -> None:
    """Write the list as CSV on standard output (email, reason, source, campaign, date)."""
    from mailblast.campaign import suppress_commands

    _run(lambda console: suppress_commands.run_export(sys.stdout), stderr=True)
# Each command's --json document has these keys whatever happened (README: "JSON output"); a
# value the run did not reach stays as here.
JSON_KEYS: dict[str, dict[str, Any]] = {
    "check": {
        "rows": None, "encoding": None, "delimiter": None, "email_column": None, "elapsed_seconds": 0.0,
        "problems": [],
    },
    "send": {
        "rows": None, "to_send": 0, "campaign": None, "destination": None,
        "counts": {
            "total": 0, "sent": 0, "failed": 0, "uncertain": 0, "skipped": 0, "suppressed": 0,
            "not_attempted": 0,
        },
        "elapsed_seconds": 0.0, "rate_per_second": 0.0, "journal": None, "report": None, "report_rows": 0,
        "relays": None, "learned": [], "outbox": None,
    },
    "status": {
        "journal": None, "campaign": None, "delivered_to": [], "recipients": None, "template": None,
        "started": None, "last_activity": None, "counts": None, "active_seconds": 0.0, "rate_per_second": 0.0,
        "failures": [], "after_the_send": None,
    },
}  # fmt: skip


def _facts(command: str, recipients: Path) -> dict[str, Any]:
    return {"command": command, "recipients_file": str(recipients), **copy.deepcopy(JSON_KEYS[command])}


def _prompt_password(prompt: str) -> str:
    return typer.prompt(prompt, hide_input=True)


def _ask_password(prompt: str) -> str:
    if not sys.stdin.isatty():
        raise ConfigError(
            "the SMTP URL names a user but no password was given",
            f"set {PASSWORD_ENV} in the environment, or password_command in the [smtp] table",
        )
    return typer.prompt(prompt, hide_input=True)


def _usage(message: str, hint: str) -> int:
    raise InputError(message, hint)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mailblast {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool | None, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = None,
) -> None:
    """mailblast: one message per CSV row, sent inside your provider's rate limit."""


def main() -> None:
    app()
