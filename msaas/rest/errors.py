"""The one place where exceptions become JSON errors with the right status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import redis

from .. import storage

log = logging.getLogger("msaas.rest")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def error(status: int, message: str, headers: dict[str, str] | None = None):
    return jsonify({"error": message}), status, headers or {}


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error(exc.status, exc.message, exc.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        limit = app.extensions["msaas"].settings.max_upload_bytes // (1024 * 1024)
        return error(413, f"the upload is larger than the {limit} MB allowed")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(redis.exceptions.OutOfMemoryError)
    def redis_full(exc):
        log.error("redis is full (maxmemory): %s", exc)
        return error(507, "the job queue (redis) is full; try again later", {"Retry-After": "60"})

    @app.errorhandler(storage.StoreFull)
    def store_full(exc):
        log.error("object store full: %s", exc)
        return error(507, "the object store is full; try again later", {"Retry-After": "60"})

    @app.errorhandler(redis.RedisError)
    def redis_down(exc):
        # inside a script, redis-py sees a plain error, not OutOfMemoryError
        if "command not allowed when used memory" in str(exc):
            return redis_full(exc)
        log.error("redis unavailable: %s", exc)
        return error(503, "the job queue (redis) is unavailable; try again shortly", {"Retry-After": "5"})

    @app.errorhandler(storage.StorageError)
    def store_down(exc):
        log.error("object store unavailable: %s", exc)
        return error(503, "the object store is unavailable; try again shortly", {"Retry-After": "5"})

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error")
        return error(500, "internal error")
