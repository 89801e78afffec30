"""kdistill: the distillation engine (data, students, layer mapping, losses, trainer, metrics).

Imports no Prefect and no DVC: the orchestration lives in `pipelines/` and `tasks/`.
"""

__version__ = "0.1.0"
