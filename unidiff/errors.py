"""User-facing errors.

Every error a user can cause by bad input (an unknown name, a wrong alphabet, an oversize request, a corrupt
checkpoint, a missing plugin) is an `UnidiffError`: its message says what was wrong and what to do. The command
line prints it as one line and exits non-zero; Python callers can catch it.
"""


class UnidiffError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class UnknownNameError(UnidiffError, KeyError):
    """A registry lookup by an unknown name; the message lists the valid names."""

    def __init__(self, kind: str, name: str, known: list[str], hint: str = ""):
        self.kind, self.name, self.known = kind, name, known
        listing = ", ".join(known) if known else "none are installed"
        plural = {"modality": "modalities", "policy": "policies", "process": "processes"}.get(kind, kind + "s")
        msg = f"unknown {kind} {name!r}; known {plural}: {listing}"
        super().__init__(msg + (f". {hint}" if hint else ""))

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ModalityInputError(UnidiffError, ValueError):
    """Content that a modality cannot encode (a wrong alphabet, an empty sequence, ...)."""


class CheckpointError(UnidiffError):
    """A checkpoint folder that is missing, corrupt, truncated or needs an absent plugin."""


class PluginError(UnidiffError):
    """A plugin that misbehaved (a bad registration, or encode/decode that failed or returned bad ids); the
    message names the plugin and the offending value."""
