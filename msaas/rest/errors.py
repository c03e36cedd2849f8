"""The one place where exceptions become JSON errors with the right status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import redis

from .. import storage

log = logging.getLogger("msaas.rest")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: int, message: str):
    return jsonify({"error": message}), status


def register(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error(exc.status, exc.message)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        limit = app.extensions["msaas"].settings.max_upload_bytes // (1024 * 1024)
        return error(413, f"the upload is larger than the {limit} MB allowed")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(redis.RedisError)
    def redis_down(exc):
        log.error("redis unavailable: %s", exc)
        return error(503, "the job queue (redis) is unavailable; try again shortly")

    @app.errorhandler(storage.StorageError)
    def store_down(exc):
        log.error("object store unavailable: %s", exc)
        return error(503, "the object store is unavailable; try again shortly")

    @app.errorhandler(Exception)
    def unexpected(exc):
        log.exception("unexpected error")
        return error(500, "internal error")
