"""Upload buffers kept by upload id after the upload finished: ``bytearray`` values in a dict."""

from __future__ import annotations

from typing import Any

from flask import Flask

from leakapps import common

uploads: dict[str, bytearray] = {}


def receive_chunk(upload_id: str, chunk: bytes) -> int:
    buffer = uploads.get(upload_id)
    if buffer is None:
        buffer = uploads[upload_id] = bytearray(common.PER_REQUEST)  # leak
    buffer[: len(chunk)] = chunk
    return len(buffer)


app = Flask(__name__)
app.register_blueprint(common.pages)


@app.post("/uploads/<upload_id>")
@app.get("/uploads/<upload_id>")
def upload(upload_id: str) -> Any:
    return {"received": receive_chunk(upload_id, upload_id.encode())}


common.guard_flask(app, lambda: uploads)

api = common.fastapi_app(lambda: uploads)


@api.get("/uploads/{upload_id}")
def api_upload(upload_id: str) -> dict[str, Any]:
    return {"received": receive_chunk(upload_id, upload_id.encode())}
