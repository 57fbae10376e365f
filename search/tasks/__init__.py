"""Built-in tasks, registered by name; user tasks (`module:function`) are added by the loader."""

from search.tasks.base import Task
from search.tasks.digits import DigitsTask
from search.tasks.minilm_sts import MiniLMSTSTask

TASKS: dict[str, type[Task]] = {DigitsTask.name: DigitsTask, MiniLMSTSTask.name: MiniLMSTSTask}

__all__ = ["TASKS", "Task"]
