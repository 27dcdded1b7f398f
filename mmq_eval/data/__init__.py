"""Real data sets, prepared offline into a local data root (see docs/data.md).

One module per data set (``coco_karpathy``, ``coco2017``, ``flickr30k``, ``vqav2``, ``gqa``) converts
the official downloads (``prepare``) and loads the prepared files into the ``mmq_*`` tasks
(``load_docs``); ``prepare`` holds the ``mmq-eval prepare-data`` subcommand.
"""
