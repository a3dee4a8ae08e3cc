"""The one error type users can cause. `dmc` and the stages print it as one line and exit 2."""


class DmcError(Exception):
    """A problem with the user's input, params or environment, stated in one line."""
