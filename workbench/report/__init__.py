"""What a run measured, for people and programs: the typed report, metrics, tables, pages.

May import every layer below `run`. `record.Report` (the report's fields, read and written
as JSON), `metrics`, `display` (terminal tables and the CLI's progress), `html` and `svg`
(the self-contained report page), `inspection` (`workbench inspect`).
"""
