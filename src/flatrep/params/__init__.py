"""What an experiment is: ``params.yaml`` read, checked and expanded into runs.

``studies`` (loading, the grid of runs, checkpoint steps, ensemble groups), ``validation``
(the JSON schema and the checks a schema cannot express, before any job starts) and
``schedules`` (learning-rate schedules). No tensors, no files but ``params.yaml``.
"""
