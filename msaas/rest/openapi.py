"""The API's OpenAPI 3.1 description, served at /apiv1/openapi.json (tests hold it to the routes)."""

from __future__ import annotations

from .. import audio, models

ERROR = {"$ref": "#/components/responses/Error"}
SONGHASH = {"name": "songhash", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[0-9a-f]{56}$"}}
LINK = {
    "type": "string",
    "format": "uri",
    "maxLength": 2048,
    "description": "instead of mp3: an http(s) link to the song, fetched by the server (not from private addresses)",
}
TRACK = {"name": "track", "in": "path", "required": True, "schema": {"type": "string"}, "description": "`vocals` or `vocals.mp3`"}


def _choices(json_body: bool = False) -> dict:
    model = {"type": "string", "description": "a model of GET /apiv1/models (`a+b`: an ensemble); default: DEMUCS_MODEL"}
    if json_body:  # or a list of models: an ensemble, their stems averaged
        names = {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": models.ENSEMBLE_MAX}
        model = {"anyOf": [model, names], "description": model["description"] + "; a list of 2-4 models: an ensemble"}
    return {
        "model": model,
        "two_stems": {"type": "string", "description": "one track and the rest, e.g. vocals -> vocals + no_vocals"},
        "format": {"type": "string", "enum": list(audio.FORMATS)},
        "bitrate": {"type": "integer", "enum": list(audio.BITRATES), "description": "kbps, mp3 only"},
        "name": {"type": "string", "maxLength": 480, "description": "listed as (default: the uploaded file's name)"},
    }


def spec() -> dict:
    callback = {
        "type": "object",
        "required": ["url"],
        "properties": {"url": {"type": "string", "format": "uri"}, "data": {"description": "returned as is in the callback"}},
    }
    removed = {"200": {"description": "removed", "content": {"application/json": {"schema": {"type": "object"}}}}, "404": ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "MSaaS: music separation as a service", "version": "1"},
        "paths": {
            "/": {"get": {"summary": "health page for load balancers", "responses": {"200": {"description": "HTML page"}}}},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (queue, jobs by state, workers)",
                    "responses": {"200": {"description": "text format"}},
                }
            },
            "/healthz": {"get": {"summary": "liveness", "responses": {"200": {"description": "the process answers"}}}},
            "/readyz": {
                "get": {
                    "summary": "readiness: Redis and the object store answer",
                    "responses": {"200": {"description": "ready"}, "503": ERROR},
                }
            },
            "/apiv1/separate": {
                "post": {
                    "summary": "upload a song to separate",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "oneOf": [{"required": ["mp3"]}, {"required": ["url"]}],
                                    "properties": {
                                        "mp3": {
                                            "type": "string",
                                            "contentEncoding": "base64",
                                            "minLength": 4,
                                            "pattern": r"^[A-Za-z0-9+/\r\n]+={0,2}$",
                                        },
                                        "url": LINK,
                                        **_choices(json_body=True),
                                        "callback": callback,
                                    },
                                }
                            },
                            "multipart/form-data": {
                                "schema": {
                                    "type": "object",
                                    "oneOf": [{"required": ["mp3"]}, {"required": ["url"]}],
                                    "properties": {
                                        "mp3": {"type": "string", "contentMediaType": "application/octet-stream"},
                                        "url": LINK,
                                        **_choices(),
                                        "callback": {"type": "string", "description": "JSON of {url, data}"},
                                    },
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "queued, or already known",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
                        },
                        **{code: ERROR for code in ("400", "401", "413", "415", "422", "429", "503", "507")},
                    },
                }
            },
            "/apiv1/queue": {
                "get": {
                    "summary": "songs waiting, oldest first",
                    "responses": {
                        "200": {
                            "description": "the queue",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"queue": {"type": "array", "items": {"type": "string"}}},
                                    }
                                }
                            },
                        }
                    },
                }
            },
            "/apiv1/songs": {
                "get": {
                    "summary": "the caller's songs, newest first, a page at a time",
                    "parameters": [
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                        },
                        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
                    ],
                    "responses": {
                        "200": {
                            "description": "a page of songs",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Songs"}}},
                        },
                        "400": ERROR,
                    },
                }
            },
            "/apiv1/song/{songhash}": {
                "delete": {
                    "summary": "remove a whole song: stems, peaks, record",
                    "parameters": [SONGHASH],
                    "responses": {**removed, "409": ERROR},
                }
            },
            "/apiv1/status/{songhash}": {
                "get": {
                    "summary": "a job's state, stage, progress and tracks",
                    "parameters": [SONGHASH],
                    "responses": {
                        "200": {
                            "description": "status",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}},
                        },
                        "404": ERROR,
                    },
                }
            },
            "/apiv1/track/{songhash}/{track}": {
                "get": {
                    "summary": "download a stem",
                    "parameters": [SONGHASH, TRACK],
                    "responses": {
                        "200": {"description": "the stem", "content": {f.content_type: {} for f in audio.FORMATS.values()}},
                        "404": ERROR,
                    },
                },
                "delete": {"summary": "remove a stem", "parameters": [SONGHASH, TRACK], "responses": removed},
            },
            "/apiv1/remove/{songhash}/{track}": {
                "get": {"summary": "remove a stem (the course's route)", "parameters": [SONGHASH, TRACK], "responses": removed},
                "delete": {"summary": "remove a stem", "parameters": [SONGHASH, TRACK], "responses": removed},
            },
            "/apiv1/zip/{songhash}": {
                "get": {
                    "summary": "every stem of a song in one zip",
                    "parameters": [SONGHASH],
                    "responses": {"200": {"description": "the stems", "content": {"application/zip": {}}}, "404": ERROR},
                }
            },
            "/apiv1/peaks/{songhash}/{track}": {
                "get": {
                    "summary": "a stem's waveform: the loudest sample of every 20 ms, 0 to scale (see msaas/peaks.py)",
                    "parameters": [SONGHASH, TRACK],
                    "responses": {
                        "200": {
                            "description": "peaks",
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Peaks"}}},
                        },
                        "404": ERROR,
                    },
                }
            },
            "/apiv1/mix/{songhash}": {
                "get": {
                    "summary": "the stems mixed into one file, a gain per track (?vocals=0: karaoke), in the stems' format",
                    "parameters": [
                        SONGHASH,
                        {
                            "name": "gains",
                            "in": "query",
                            "style": "form",
                            "explode": True,
                            "description": "track=gain, 0 to 4; a track not named keeps 1",
                            "schema": {"type": "object", "additionalProperties": {"type": "number", "minimum": 0, "maximum": 4}},
                        },
                    ],
                    "responses": {"200": {"description": "the mix"}, "400": ERROR, "404": ERROR, "503": ERROR},
                }
            },
            "/apiv1/models": {
                "get": {
                    "summary": "models, their engines, tracks, whether their weights are available, license and size",
                    "responses": {
                        "200": {"description": "models", "content": {"application/json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/apiv1/openapi.json": {"get": {"summary": "this description", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
        },
        "components": {
            "schemas": {
                "Accepted": {
                    "type": "object",
                    "required": ["hash", "reason"],
                    "properties": {"hash": {"type": "string"}, "reason": {"type": "string"}},
                },
                "Status": {
                    "type": "object",
                    "properties": {
                        "hash": {"type": "string"},
                        "state": {"type": "string", "enum": ["queued", "running", "done", "failed"]},
                        "stage": {"type": "string"},
                        "progress": {"type": "number", "minimum": 0, "maximum": 1},
                        "model": {"type": "string"},
                        "tracks": {"type": "array", "items": {"type": "string"}},
                        "error": {"type": "string"},
                        "parts": {"type": "integer", "minimum": 2, "description": "a long song split across this many workers"},
                        "queue_position": {"type": "integer", "minimum": 0, "description": "queued: messages ahead of it"},
                        "eta_s": {"type": "number", "minimum": 0, "description": "running: seconds left at its pace so far"},
                        "urls": {"type": "object"},
                        "peaks": {"type": "object", "description": "each track's waveform URL"},
                        "name": {"type": "string", "description": "the uploaded file's name"},
                        "duration_s": {"type": "number"},
                        "created": {"type": "number", "description": "Unix time"},
                    },
                },
                "Songs": {
                    "type": "object",
                    "properties": {
                        "songs": {"type": "array", "items": {"$ref": "#/components/schemas/Status"}},
                        "total": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "next": {"type": ["integer", "null"], "description": "the next page's offset"},
                    },
                },
                "Peaks": {
                    "type": "object",
                    "required": ["rate", "samples", "span", "scale", "peaks"],
                    "properties": {
                        "rate": {"type": "integer", "description": "the stem's sample rate"},
                        "samples": {"type": "integer", "description": "the stem's length in samples"},
                        "span": {"type": "integer", "description": "samples per peak"},
                        "scale": {"type": "integer", "description": "the peak value of full scale"},
                        "peaks": {"type": "array", "items": {"type": "integer"}, "description": "ceil(samples / span) of them"},
                    },
                },
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            },
            "responses": {
                "Error": {
                    "description": "an error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        },
    }
