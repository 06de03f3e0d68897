"""The one exception type that means "the user's input is wrong", not "workbench is broken".

The CLI turns a `WorkbenchError` into a single line on stderr and exit code 2, so every check
of user input raises it with a message that names the offending file or value and, where there
is one, says what to do instead. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class WorkbenchError(Exception):
    """Bad input (missing folder, corrupt model, unwritable output, ...), explained in one line.

    >>> import workbench as wb
    >>> try:
    ...     wb.imprint("no_such_folder/")
    ... except wb.WorkbenchError as e:
    ...     print(e)
    data folder not found: no_such_folder
    """
