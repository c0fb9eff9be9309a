"""The Jinja environment templates render in: sandboxed, kept inside their folder, and bounded.

Templates are shared between people, so a template is not trusted more than it must be:
it renders in Jinja's ``SandboxedEnvironment`` (no ``__globals__`` or other internals),
``include`` and ``import`` resolve, after symlinks, only inside the template's folder, and
one row's render stops with an error once it takes too long or grows too large.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment, SecurityError, safe_range

MAX_RENDER_SECONDS = 5.0  # one row's headers or body
MAX_NUMBER_ARGUMENT = 1_000_000  # the largest "x" * n, center(n), ljust(n) ... the sandbox builds
_CHECK_EVERY = 1024  # loop items between two looks at the clock
_CHUNKS_A_LOOK = 32  # output chunks between two looks at the size and the clock


class RenderLimit(Exception):
    """One row's render went past a bound: too long, or too large."""


class FolderLoader(jinja2.FileSystemLoader):
    """Loads includes and imports only from files that resolve, after symlinks, inside ``folder``."""

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self._root = folder.resolve()

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if not Path(filename).resolve().is_relative_to(self._root):
            raise jinja2.TemplateNotFound(f"{template} (it leads outside the template's folder {self._root})")
        return source, filename, uptodate


class _Deadline:
    """When the current render must end; set for each render."""

    at = float("inf")

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise RenderLimit(f"the template ran for more than {MAX_RENDER_SECONDS:g} s for this row")


class _TimedRange:
    """``range`` that looks at the deadline while a loop runs over it (nested loops over
    sandbox ranges of 100,000 could otherwise run for hours without writing anything)."""

    def __init__(self, items: range, deadline: _Deadline) -> None:
        self._items = items
        self._deadline = deadline

    def __iter__(self) -> Iterator[int]:
        for i, item in enumerate(self._items):
            if i % _CHECK_EVERY == 0:
                self._deadline.check()
            yield item

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __contains__(self, item: object) -> bool:
        return item in self._items


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER_ARGUMENT


_BIG_WIDTH = re.compile(r"[0-9]{7,}")  # a width of a million or more in a format string
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _refuse(what: str) -> SecurityError:
    return SecurityError(f"{what} would build a value larger than the sandbox allows")


def _bounded_width(function: Callable[..., Any], name: str) -> Callable[..., Any]:
    """A filter that refuses widths of a million or more (``center``, ``indent``, ``format``)."""

    @functools.wraps(function)
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if any(_too_big(a) for a in (*args, *kwargs.values())) or (
            name == "format" and isinstance(value, str) and _BIG_WIDTH.search(value)
        ):
            raise _refuse(f"the {name} filter")
        return function(value, *args, **kwargs)

    return bounded


class Sandbox(SandboxedEnvironment):
    """SandboxedEnvironment, plus bounds on the few operations that make much from little."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.deadline = _Deadline()
        self.globals["range"] = self._range
        for name in ("center", "indent", "format"):
            self.filters[name] = _bounded_width(self.filters[name], name)

    def _range(self, *args: int) -> _TimedRange:
        return _TimedRange(safe_range(*args), self.deadline)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            count, items = (right, left) if isinstance(right, int) else (left, right)
            sized = isinstance(items, str | list | tuple) and isinstance(count, int)
            if sized and len(items) * count > MAX_NUMBER_ARGUMENT:
                raise _refuse("'*'")
        elif operator == "**" and isinstance(right, int | float) and abs(right) > 1000:
            raise _refuse("'**' with an exponent above 1000")
        elif operator == "%" and isinstance(left, str) and _BIG_WIDTH.search(left):
            raise _refuse("'%' with a width of a million or more")
        return super().call_binop(context, operator, left, right)

    def call(self, context: jinja2.runtime.Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):  # "x".center(10**8), "{:>99999999}".format(1)
            name = getattr(obj, "__name__", "")
            if name in _PADDING_METHODS and any(_too_big(a) for a in (*args, *kwargs.values())):
                raise _refuse(f"str.{name}")
            if name in ("format", "format_map") and _BIG_WIDTH.search(owner):
                raise _refuse(f"str.{name} with a width of a million or more")
        return super().call(context, obj, *args, **kwargs)


class Unsandboxed(jinja2.Environment):
    """A plain environment with the same render bounds, for templates the user wrote."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.deadline = _Deadline()


def make_environment(folder: Path, *, sandbox: bool, **options: Any) -> jinja2.Environment:
    kind = Sandbox if sandbox else Unsandboxed
    options.setdefault("undefined", jinja2.StrictUndefined)
    return kind(loader=FolderLoader(folder), keep_trailing_newline=True, **options)


def render_bounded(template: jinja2.Template, context: dict[str, Any], max_chars: int) -> str:
    """Render, stopping with RenderLimit past ``max_chars`` of output or MAX_RENDER_SECONDS."""
    deadline: _Deadline = template.environment.deadline  # type: ignore[attr-defined]
    deadline.at = time.monotonic() + MAX_RENDER_SECONDS
    parts: list[str] = []
    size = 0
    chunks = template.root_render_func(template.new_context(context))
    try:
        # a few chunks at a time, counted in C: a typical message is one batch
        while batch := list(itertools.islice(chunks, _CHUNKS_A_LOOK)):
            size += sum(map(len, batch))
            if size > max_chars:
                raise RenderLimit(f"the template wrote more than {max_chars:,} characters for this row")
            deadline.check()
            parts.extend(batch)
    except (RenderLimit, RecursionError):
        raise
    except Exception:
        template.environment.handle_exception()  # jinja's own: the error with the template's line
    finally:
        deadline.at = float("inf")
    return "".join(parts)
