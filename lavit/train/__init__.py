"""One trainer for every stage (trainer.py); a stage is a task object (tasks/)."""
