"""The trivial FastAPI app ``compare_servers.py`` serves: one JSON route, no work."""

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, int]:
    return {"ok": 1}
