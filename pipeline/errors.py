"""The one exception type jobs raise for bad input: its message is shown to the user as-is."""


class PipelineError(Exception):
    """A problem the user can fix (bad path, option or data); printed as one line, exit status 2."""
