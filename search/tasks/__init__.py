"""Built-in tasks, registered by name."""

from search.tasks.base import Task
from search.tasks.digits import DigitsTask

TASKS: dict[str, type[Task]] = {DigitsTask.name: DigitsTask}

__all__ = ["TASKS", "Task"]
