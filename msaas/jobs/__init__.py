"""The job system in Redis, in the rooms python-rq draws it in:

message.py    a job as it travels (Job, its JSON message), its states (JobState, shared with the Lua scripts), songhash
queue.py      job records and the reliable work queue: submit, claim, progress, and each way a job ends (JobQueue)
splits.py     a long song across workers: its plan, one message per part, the stitch queued once (Splits)
registry.py   the workers: heartbeats, and the jobs of a dead worker given back (WorkerRegistry)
directory.py  which models the service has and which the live workers can load (ModelDirectory)
"""

from .directory import ModelDirectory, ModelEntry
from .message import LUA_STATES, BadMessage, Job, JobState, lua, songhash, songhash_of_file
from .queue import JobQueue, beat, connect
from .registry import WorkerRegistry
from .splits import PARTS_SHARE, Splits

__all__ = [
    "LUA_STATES",
    "PARTS_SHARE",
    "BadMessage",
    "Job",
    "JobQueue",
    "JobState",
    "ModelDirectory",
    "ModelEntry",
    "Splits",
    "WorkerRegistry",
    "beat",
    "connect",
    "lua",
    "songhash",
    "songhash_of_file",
]
