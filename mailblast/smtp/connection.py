"""One SMTP connection (aiosmtplib), and the one place where its errors become verdicts.

Everything that can go wrong while connecting leaves this module as a ``TransactionError``
carrying a classified ``Verdict``; nothing above it knows aiosmtplib's exceptions. Every
verdict leaves without the password or token, however the server echoed it (redact.py).
Once open, messages go through ``transactions`` (mailblast.smtp.transaction), which pipelines.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiosmtplib

from mailblast.errors import ConfigError
from mailblast.message.compose import ComposedMessage
from mailblast.smtp.credentials import Credentials, SecretError
from mailblast.smtp.replies import Cause, Kind, Verdict, classify, connection_lost
from mailblast.smtp.transaction import Accepted, TransactionError, Transactions
from mailblast.smtp.urls import SmtpTarget

LOCAL_HOSTNAME = socket.gethostname() or "localhost"


def _fatal(text: str) -> TransactionError:
    return TransactionError(Verdict(Kind.FATAL, None, None, None, text))


R = TypeVar("R")


def _redacting(method: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Every verdict leaving ``method`` (raised or returned) without the secrets a server echoed."""

    @functools.wraps(method)
    async def redacted(self: Connection, *args: Any, **kwargs: Any) -> R:
        clean = self._clean
        try:
            result = await method(self, *args, **kwargs)
        except TransactionError as e:
            refused = tuple((a, clean(v)) for a, v in e.refused)
            raise TransactionError(clean(e.verdict), uncertain=e.uncertain, refused=refused) from None
        return result

    return redacted


class Connection:
    """A lazily opened, reusable SMTP session with one server."""

    def __init__(
        self,
        target: SmtpTarget,
        credentials: Credentials | None,
        *,
        timeout: float,
        tls_context: ssl.SSLContext | None = None,
        pipelining: bool = True,
    ) -> None:
        self.target = target
        self._timeout = timeout
        self._pipelining = pipelining
        self._credentials = credentials
        self._tls_context = tls_context or ssl.create_default_context()
        self._smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            timeout=timeout,
            use_tls=target.security == "tls",
            start_tls=True if target.security == "starttls" else None,
            tls_context=self._tls_context,
            local_hostname=LOCAL_HOSTNAME,
        )
        self.transactions: Transactions | None = None  # once open

    def __repr__(self) -> str:
        return f"Connection({self.target.display()})"

    def _clean(self, verdict: Verdict) -> Verdict:
        if self._credentials is None:
            return verdict
        return dataclasses.replace(verdict, text=self._credentials.redact(verdict.text))

    @property
    def is_open(self) -> bool:
        return self._smtp.is_connected

    def offers(self, extension: str) -> bool:
        """Whether the server named ``extension`` in its EHLO reply (once open)."""
        return self._smtp.supports_extension(extension)

    @_redacting
    async def open(self) -> None:
        """Connect, secure and log in; raises TransactionError."""
        where = self.target.display()
        try:
            await self._smtp.connect()
            if self._smtp.is_ehlo_or_helo_needed:  # after STARTTLS the extensions are asked again
                await self._smtp.ehlo()
        except (aiosmtplib.SMTPException, OSError) as e:  # ssl.SSLError is an OSError
            if (tls_error := _tls_error(e)) is not None:
                self._smtp.close()
                raise _fatal(f"TLS with {where} failed: {tls_error}") from None
            raise self._connect_error(e) from None
        if self._credentials is not None:
            await self._login(self._credentials)
        protocol = self._smtp.protocol
        assert protocol is not None and protocol.transport is not None
        self.transactions = Transactions(
            protocol.transport,
            protocol,
            pipelining=self._pipelining and self._smtp.supports_extension("pipelining"),
            smtputf8=self._smtp.supports_extension("smtputf8"),
            timeout=self._timeout,
            clean=self._clean,
        )

    def _connect_error(self, error: Exception) -> TransactionError:
        self._smtp.close()
        where = self.target.display()
        if isinstance(error, aiosmtplib.SMTPResponseException):  # e.g. 421 or 554 as greeting
            return TransactionError(classify(error.code, error.message))
        if isinstance(error, aiosmtplib.SMTPConnectError | OSError):
            return TransactionError(connection_lost(f"cannot connect to {where}: {_connect_reason(error)}"))
        if isinstance(error, aiosmtplib.SMTPException) and "STARTTLS" in str(error):
            return _fatal(f"{where} does not offer STARTTLS, which smtp+starttls:// requires")
        if isinstance(error, aiosmtplib.SMTPException):
            return TransactionError(connection_lost(f"{where}: {_reason(error)}"))
        raise error

    async def _login(self, credentials: Credentials) -> None:
        encrypted = self._smtp.get_transport_info("sslcontext") is not None
        if not encrypted and not self.target.is_loopback:
            self._smtp.close()
            raise _fatal(
                f"{self.target.host} offered no STARTTLS, and mailblast will not send a password "
                "unencrypted; use smtp+starttls:// or smtps://"
            )
        if not self._smtp.supports_extension("auth"):
            self._smtp.close()
            raise _fatal(f"{self.target.host} does not offer AUTH, but the URL names a user")
        user, password = credentials.username, credentials.password or ""
        try:
            method = credentials.choose_method(self.target.host, self._smtp.server_auth_methods)
            if method == "xoauth2":
                await self._smtp.auth_xoauth2(user, await credentials.fresh_token())
            elif method == "plain":
                await self._smtp.auth_plain(user, password)
            elif method == "login":
                await self._smtp.auth_login(user, password)
            else:
                await self._smtp.login(user, password)  # the best the server offers
        except (ConfigError, SecretError) as e:
            self._smtp.close()
            raise _fatal(str(e).replace("\nHint: ", "; ")) from None
        except aiosmtplib.SMTPResponseException as e:
            self._smtp.close()
            verdict = classify(e.code, e.message)
            # Any auth refusal ends the run, unless a provider's known wording says otherwise
            # (Mailtrap answers too many connections, and a spent monthly quota, with a 535).
            if e.code in (535, 534, 530, 538) and verdict.provider is None:
                verdict = Verdict(Kind.FATAL, e.code, verdict.enhanced_code, None, e.message, Cause.SIGN_IN)
            raise TransactionError(verdict) from None
        except aiosmtplib.SMTPException as e:
            self._smtp.close()
            raise TransactionError(connection_lost(f"login failed: {_reason(e)}")) from None

    async def send(self, message: ComposedMessage) -> Accepted:
        """One message on its own, on the open connection; raises TransactionError."""
        assert self.transactions is not None, "open() first"
        return await self.transactions.send(message)

    def abort(self) -> None:
        """Drop the connection without QUIT."""
        self._smtp.close()

    async def close(self) -> None:
        """QUIT politely; a connection that is already gone is simply dropped."""
        if not self._smtp.is_connected:
            return
        if self.transactions is not None:
            self.transactions.detach()
        try:
            await self._smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            self._smtp.close()
        except asyncio.CancelledError:
            self._smtp.close()
            raise


def _tls_error(error: BaseException | None) -> str | None:
    """The TLS failure behind an error, if any (aiosmtplib wraps some in SMTPConnectError)."""
    while error is not None:
        if isinstance(error, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {error.verify_message}"
        if isinstance(error, ssl.SSLError):
            if error.reason == "WRONG_VERSION_NUMBER":  # plain SMTP answered a TLS hello
                return "the server did not answer in TLS (WRONG_VERSION_NUMBER)"
            return error.reason or str(error)
        error = error.__cause__ or error.__context__
    return None


def _connect_reason(error: BaseException) -> str:
    """Why a connection failed, once: aiosmtplib's text repeats the host and port we already name."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return f"the host name is not known ({cause.strerror})"
        if isinstance(cause, TimeoutError | aiosmtplib.SMTPConnectTimeoutError):
            return "no answer in time"
        if isinstance(cause, OSError) and cause.errno:
            return os.strerror(cause.errno).lower()
        cause = cause.__cause__ or cause.__context__
    return _reason(error)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
