"""uvicorn's HTTP/1.1 protocol with a deadline for a request's headers (slowloris).

uvicorn times out a connection only between requests (`timeout_keep_alive`, armed when a response
is complete): a client that opens a connection, or starts a request, and sends its headers a byte
at a time holds a connection, its buffers and a file descriptor for as long as it likes (issue 22:
1,520 half-sent requests held for 30 s and more). This subclass arms a timer when a connection is
made and whenever a new request starts arriving, and cancels it once the headers are in; when it
fires, the client hears 408 and the connection is closed. No uvicorn option does this."""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

_BODY = b'{"error": "the request headers did not arrive in time"}'
_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                     b"content-length: %d\r\n\r\n%s" % (len(_BODY), _BODY))


def with_header_timeout(seconds: float) -> type[H11Protocol]:
    """The protocol class to give uvicorn.Config(http=...)."""

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout_s = seconds
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers():
                self._arm()  # a no-op while armed: the deadline runs from the request's first byte
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    return HeaderTimeoutProtocol
