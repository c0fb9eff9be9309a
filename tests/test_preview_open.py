"""`preview --open`: the HTML part in a file, opened with the default browser (or its path shown)."""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.test_send_cli import mailblast


def browser(tmp_path: Path) -> Path:
    """An executable that plays the browser: it writes down the URL it was given."""
    script = tmp_path / "fake-browser"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(tmp_path / 'opened')!r}, 'w').write(sys.argv[1])\n"
    )
    script.chmod(0o755)
    return script


def test_open_writes_the_html_part_and_opens_it(tmp_path: Path) -> None:
    (tmp_path / "t.md").write_text("Subject: Hi\nFrom: a@mydomain.org\n\n# Grüße, {{ name }}\n")
    (tmp_path / "people.csv").write_text("email,name\nada@mydomain.org,Ada <b>\n")
    proc = mailblast(
        tmp_path, "preview", "people.csv", "-t", "t.md", "--open", env={"BROWSER": str(browser(tmp_path))}
    )
    assert proc.returncode == 0, proc.stderr
    url = (tmp_path / "opened").read_text()
    page = Path(unquote(urlsplit(url).path))
    assert url.startswith("file://") and page.suffix == ".html"
    assert f"opened in the browser: {page}" in proc.stdout.replace("\n", "")
    html = page.read_text(encoding="utf-8-sig")
    assert "<h1>Grüße, Ada &lt;b&gt;</h1>" in html
    page.unlink()


def test_without_a_browser_the_path_is_printed(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("Subject: Hi\nFrom: a@mydomain.org\n\nHello <{{ name }}>\n")
    (tmp_path / "people.csv").write_text("email,name\nada@mydomain.org,Ada\n")
    env = {"BROWSER": str(tmp_path / "no-such-browser"), "PATH": "/nonexistent", "DISPLAY": ""}
    proc = mailblast(tmp_path, "preview", "people.csv", "-t", "t.txt", "--open", env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.replace("\n", "")
    assert "the message has no HTML part: the browser shows its plain text" in out
    path = Path(out.split("no browser available; the HTML part is in ")[1].strip())
    assert path.read_text(encoding="utf-8-sig") == "<pre>Hello &lt;Ada&gt;\n</pre>"
    path.unlink()
