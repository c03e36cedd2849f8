"""Every Redis key name MSaaS uses is built here."""

QUEUE = "toWorker"  # list: JSON job messages, LPUSH by rest, BLMOVE by workers (oldest at the right)
LOGGING = "logging"  # list: log lines, LPUSH by everyone, BRPOP by the logs tail
WORKERS = "workers"  # set: names of workers that have claimed work
DEAD = "dead"  # list: JSON messages of jobs that failed for good
STATS = "stats"  # hash: state -> number of jobs that ended so (counters for /metrics)
OUTBOX = "outbox"  # sorted set: callback delivery id -> when it is due (or when the lease of the worker sending it ends)
OUTBOX_MESSAGES = "outbox:messages"  # hash: callback delivery id -> JSON {id, url, body, attempt, hash}
EXPIRING = "expiring"  # sorted set: songhash -> when its stems are removed (RETENTION_S after its job ended)

LOGGING_MAX = 10_000  # the logging list is trimmed to this many lines when nobody tails it
DEAD_MAX = 1_000  # the dead-letter list keeps the newest this many


def job_key(songhash: str) -> str:
    return f"job:{songhash}"


SONGS_PREFIX, NO_TENANT = "songs:", "-"


def songs_key(tenant: str | None) -> str:
    """sorted set: one tenant's songhashes by when they were submitted (`songs:-` without API keys), GET /apiv1/songs"""
    return f"{SONGS_PREFIX}{tenant or NO_TENANT}"


def processing_key(worker: str) -> str:
    return f"processing:{worker}"


def heartbeat_key(worker: str) -> str:
    return f"worker:{worker}"


def models_key(worker: str) -> str:
    """string, with a TTL: JSON {model: {"tracks", "available"}} as that worker sees them ("*" matches every worker's)"""
    return f"models:{worker}"


def parts_key(songhash: str) -> str:
    """hash of a song split across workers: p<k> -> part k's progress, d<k> -> 1 once stored, stitch -> 1 once queued"""
    return f"parts:{songhash}"
