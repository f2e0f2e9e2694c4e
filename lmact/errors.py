"""Errors a user can act on: the CLI prints them as one line and exits with code 2."""


class LmactError(Exception):
    """A problem with the user's input or setup, explained in one line."""


class UnknownNameError(LmactError):
    """A task, observation format, model or option that does not exist."""

    def __init__(self, kind: str, name: str, accepted: list[str] | tuple[str, ...]) -> None:
        self.kind = kind
        self.name = name
        self.accepted = list(accepted)
        super().__init__(f"unknown {kind} {name!r}; accepted: {', '.join(self.accepted)}")
