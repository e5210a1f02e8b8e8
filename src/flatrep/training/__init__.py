"""Training: from a study's config to its checkpoints.

``single`` (one run) and ``ensemble`` (many runs vmapped in one process) drive the same loop
(``loop``) through one trainer interface; around them the kit they share: ``preparation``
(data, loss and schedules on the device), ``batches`` (minibatch order), ``optimizers``
(torch.optim and its member-stacked twin), ``averaging`` (iterate averages) and ``resume``
(continuing an interrupted job). The checkpoint format itself is ``flatrep.checkpoint``.
"""
