"""The leaf every layer stands on: the exception tree, TOML loading and the trial records.

``core.errors`` -- ``GainloopError`` and its subclasses (every error says what was wrong
and what is allowed); ``core.tomlfile`` -- a user's TOML file read into a validated model;
``core.trial`` -- ``Proposal``, ``TrialResult`` and ``TrialRecord``, the one record of a
trial that the optimiser, the campaign plan, the catalog reader and the report share;
``core.protocols`` -- the ``Optimizer`` protocol the campaign plan drives; ``core.rows`` -- ``Row``,
a dataclass's ``as_dict()`` of every field.

It imports nothing of the project (import-linter's layers contract).
"""
