"""Serving the workflow: ``sources`` (a job's code inputs), ``attempts`` (failures that will
repeat are not retried), ``rehearsal`` (every stage at toy scale) and ``reference_pages`` (the
docs pages generated from the catalogues)."""
