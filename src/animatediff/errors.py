"""One exception type for problems with a user's input (a file, an option, a recipe).

The command line prints it as a single ``error: ...`` line and exits with status 2; library callers get
a normal exception. Messages name the file or option and the mismatch."""


class UserInputError(Exception):
    """Bad input from the user: incompatible or broken file, invalid option value."""
