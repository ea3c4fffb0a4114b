"""Exception hierarchy of the project.

Every error raised on purpose derives from :class:`DistorchError`, and the user-facing ones also
derive from ``ValueError`` so that generic ``except ValueError`` handlers (ComfyUI's input
validation among them) still catch them.
"""
from __future__ import annotations

_SHOWN_CHARS = 80  # messages quote user input; cap it so a megabyte of garbage stays readable


def shorten(text: str, limit: int = _SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DistorchError(Exception):
    """Base class of every error the project raises on purpose."""


class AllocationError(DistorchError, ValueError):
    """A malformed allocation string (or amount), pointing at the offending token.

    ``token`` is the bad piece of input and ``position`` its 0-based character offset in ``text``.
    The message reads: ``<what> '<text>': <problem> '<token>' at position <n>; <hint>``.
    """

    def __init__(
        self,
        problem: str,
        *,
        token: str,
        position: int,
        text: str = "",
        hint: str = "",
        what: str = "allocation string",
    ) -> None:
        self.problem = problem
        self.token = token
        self.position = position
        self.text = text
        self.hint = hint
        self.what = what
        message = f"{what} {shorten(text)!r}: {problem} {shorten(token)!r} at position {position}"
        super().__init__(f"{message}; {hint}" if hint else message)

    def relocated(self, text: str, offset: int, what: str = "allocation string") -> AllocationError:
        """The same error, re-expressed for ``text`` in which the failing piece starts at ``offset``."""
        return AllocationError(
            self.problem, token=self.token, position=self.position + offset, text=text, hint=self.hint, what=what
        )


class DeviceError(DistorchError, ValueError):
    """A device name that is invalid, unknown to torch, or absent from this machine."""

    def __init__(self, message: str, *, device: str | None = None) -> None:
        self.device = device
        super().__init__(message)


class BudgetError(DistorchError, ValueError):
    """A memory budget that the hardware (or the allocation itself) cannot honour."""

    def __init__(self, message: str, *, device: str | None = None) -> None:
        self.device = device
        super().__init__(message)


class QuantError(DistorchError, ValueError):
    """A quantized tensor the engine cannot handle: an unknown or unsupported GGML type, a shape whose
    last dimension does not split into whole blocks, or raw bytes of the wrong size or dtype.

    ``qtype`` is the GGML type's name when it is known (``"IQ2_XXS"``), else ``None``.
    """

    def __init__(self, message: str, *, qtype: str | None = None) -> None:
        self.qtype = qtype
        super().__init__(message)
