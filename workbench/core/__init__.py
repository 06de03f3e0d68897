"""The base every layer may use: errors, settings, progress and warnings, safe file output.

Imports nothing of workbench. Public names: `__version__`; `errors.WorkbenchError`;
`options` (`DataOptions`, `ImprintOptions`, `BackpropOptions`, `RunOptions`, `OptionError`);
`progress` (`Reporter`, `Fallback`); `outputs` (staged writing of a run's files); `terminal`
(printing outside strings literally); `native` (keeping native libraries' logs off stderr);
`jsonfile` (JSON anyone may have edited); `memory`.
"""

__version__ = "0.1.0"
