"""One exception type for problems with a user's input (a file, an option, a recipe).

Library code names the *config field* a problem is about (``num_frames``, ``motion_module``, ``out``), never
a command-line flag: a Python caller or the web UI never had the flag. Interfaces translate the field to
their own wording (the CLI's table maps ``num_frames`` to ``--frames``). The command line prints the error as
a single ``error: ...`` line and exits with status 2; library callers get a normal exception.

    raise UserInputError("exceeds the position-encoding length 32", field="num_frames", value=40)
    str(error)  # "num_frames 40: exceeds the position-encoding length 32"
"""

from __future__ import annotations

_NO_VALUE = object()


class UserInputError(Exception):
    """Bad input from the user: an incompatible or broken file, an invalid option value.

    ``field``: the config field (``GenerationConfig``/``TrainConfig`` name or API argument) the problem is
    about, or None when the message names a file itself. ``value``: the offending value, shown after the
    field. ``detail``: the message without the field."""

    def __init__(self, detail: str, field: str | None = None, value: object = _NO_VALUE):
        self.detail = detail
        self.field = field
        self.value = value
        super().__init__(self.render())

    @property
    def has_value(self) -> bool:
        return self.value is not _NO_VALUE

    def render(self, name: str | None = None, shown: str | None = None) -> str:
        """The message with ``name`` (default: the field) in front, e.g. ``--frames 40: exceeds ...``; ``shown``
        (default ``str(value)``) is how an interface writes the value (the CLI: ``k.png@0``, not a list of dicts)."""
        name = name or self.field
        if name is None:
            return self.detail
        if not self.has_value:
            return f"{name}: {self.detail}"
        return f"{name} {self.value if shown is None else shown}: {self.detail}"
